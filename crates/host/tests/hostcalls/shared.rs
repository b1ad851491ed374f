//! The shared key-value store and shared queues.

use wasmux::AbiVersion;
use wasmux::abi::services::SharedData;

use crate::harness::{Env, H, Wat, headers, st};

/// Get/set with compare-and-swap: NOT_FOUND when absent, CAS tokens change on every write,
/// stale or unknown tokens are CAS_MISMATCH, cas 0 writes unconditionally, empty values read
/// as (0, 0) without allocating.
pub(crate) fn shared_data_with_cas() {
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .data("k", "k")
            .data("k2", "k2")
            .data("k3", "k3")
            .data("v1", "v1")
            .data("v2", "v2")
            .data("v3", "v3")
            .cb(
                "proxy_on_request_headers",
                &[
                    st(0, "(call $proxy_get_shared_data {k} {o0} {o0.c})"),
                    st(1, "(call $proxy_set_shared_data {k} {v1} (i32.const 0))"),
                    st(2, "(call $proxy_get_shared_data {k} {o1} {o1.c})"),
                    st(3, "(call $proxy_set_shared_data {k} {v2} (i32.load {o1.c}))"),
                    st(4, "(call $proxy_set_shared_data {k} {v3} (i32.load {o1.c}))"),
                    st(5, "(call $proxy_get_shared_data {k} {o2} {o2.c})"),
                    st(6, "(call $proxy_set_shared_data {k} {v3} (i32.const 12345))"),
                    st(7, "(call $proxy_set_shared_data {k2} (i32.const 0) (i32.const 0) (i32.const 0))"),
                    st(8, "(call $mallocs)"),
                    st(9, "(call $proxy_get_shared_data {k2} {o3} {o3.c})"),
                    st(10, "(call $mallocs)"),
                    st(11, "(call $proxy_set_shared_data {k3} {v1} (i32.const 777))"),
                    st(12, "(call $proxy_get_shared_data {k3} {o4} {o4.c})"),
                    st(13, "(call $proxy_set_shared_data {k} {v3} (i32.const 0))"),
                    st(14, "(call $proxy_get_shared_data {k} {o5} {o5.c})"),
                    "(i32.const 0)".into(),
                ]
                .concat(),
            );
        let mut h = H::new(&wat);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), true).unwrap();
        assert_eq!(h.slots(0, 15), [1, 0, 0, 0, 8, 0, 8, 0, 2, 0, 2, 8, 1, 0, 0], "{v}");
        h.out_untouched(0);
        assert_eq!(h.out_word(0, 2), 0xEEEE_EEEE, "{v}: cas untouched when absent");
        assert_eq!(h.out_str(1), "v1");
        assert_eq!(h.out_str(2), "v2");
        assert_eq!(h.out(3), (0, 0), "{v}: empty value");
        h.out_untouched(4);
        assert_eq!(h.out_str(5), "v3");
        let [c1, c2, c_empty, c3] = [1, 2, 3, 5].map(|k| h.out_word(k, 2));
        assert!(c1 != 0 && c2 != c1 && c3 != c2 && c3 != c_empty, "{v}: fresh CAS per write: {c1} {c2} {c3}");
        assert_eq!(
            h.env.shared.entries("hc-vm"),
            [(b"k".to_vec(), b"v3".to_vec(), c3), (b"k2".to_vec(), Vec::new(), c_empty)],
            "{v}"
        );
    }
}

/// Instances of one VM id share the store; another VM id does not see it.
pub(crate) fn shared_data_is_partitioned_by_vm_id() {
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .data("k", "key")
            .data("mine", "mine")
            .cb(
                "proxy_on_request_headers",
                &(st(1, "(call $proxy_set_shared_data {k} {mine} (i32.const 0))") + "(i32.const 0)"),
            )
            .cb("proxy_on_tick", &st(0, "(call $proxy_get_shared_data {k} {o0} {o0.c})"));
        let env = Env::default();
        let mut a = H::with(&wat, env.clone(), |o| o.vm_id = "vm-a".into());
        let mut a2 = a.another();
        let mut b = H::with(&wat, env.clone(), |o| o.vm_id = "vm-b".into());
        let id = a.stream();
        a.plugin.request_headers(id, headers(&[]), true).unwrap();
        assert_eq!(a.slot(1), 0);
        a2.tick();
        assert_eq!(a2.slot(0), 0, "{v}: same VM id");
        assert_eq!(a2.out_str(0), "mine");
        let (_, cas) = env.shared.get("vm-a", b"key").expect("stored under vm-a");
        assert_eq!(a2.out_word(0, 2), cas);
        b.tick();
        assert_eq!(b.slot(0), 1, "{v}: other VM id");
        assert!(env.shared.entries("vm-b").is_empty());
    }
}

/// Register / resolve (own VM by empty or explicit id; NOT_FOUND for other VM ids and unknown
/// names), enqueue / dequeue (NOT_FOUND for unknown ids, EMPTY when drained), and
/// `proxy_on_queue_ready` on the registering root context after the enqueuing callback, also
/// when another VM enqueues.
pub(crate) fn shared_queues_notify_the_registering_root() {
    for v in AbiVersion::ALL {
        let a_wat = Wat::new(v)
            .data("q", "jobs")
            .data("nope", "nope")
            .data("vmid", "hc-vm")
            .data("othervm", "other-vm")
            .data("item", "item")
            .cb(
                "proxy_on_vm_start",
                &[
                    st(0, "(call $proxy_register_shared_queue {q} {o0.a})"),
                    st(1, "(call $proxy_resolve_shared_queue (i32.const 0) (i32.const 0) {q} {o1.a})"),
                    st(2, "(call $proxy_resolve_shared_queue {vmid} {q} {o2.a})"),
                    st(3, "(call $proxy_resolve_shared_queue {othervm} {q} {o3.a})"),
                    st(4, "(call $proxy_resolve_shared_queue (i32.const 0) (i32.const 0) {nope} {o3.a})"),
                    st(5, "(call $proxy_dequeue_shared_queue (i32.load {o0.a}) {o4})"),
                    st(6, "(call $proxy_enqueue_shared_queue (i32.const 9999) {item})"),
                    st(7, "(call $proxy_dequeue_shared_queue (i32.const 9999) {o4})"),
                    st(8, "(call $proxy_register_shared_queue {q} {o5.a})"),
                    "(i32.const 1)".into(),
                ]
                .concat(),
            )
            .cb(
                "proxy_on_request_headers",
                &(st(10, "(call $proxy_enqueue_shared_queue (i32.load {o0.a}) {item})")
                    + &st(11, "(call $cnt (i32.const 1))")
                    + "(i32.const 0)"),
            )
            .cb(
                "proxy_on_response_headers",
                &(st(12, "(call $proxy_enqueue_shared_queue (i32.load {o0.a}) (i32.const 0) (i32.const 0))")
                    + "(i32.const 0)"),
            )
            .cb(
                "proxy_on_queue_ready",
                &format!(
                    "(call $bump (i32.const 1))
                     (if (i32.eq (call $cnt (i32.const 1)) (i32.const 1))
                       (then {} {} {} {})
                       (else {} {} {}))",
                    st(20, "(local.get 0)"),
                    st(21, "(local.get 1)"),
                    st(22, "(call $proxy_dequeue_shared_queue (local.get 1) {o6})"),
                    st(23, "(call $proxy_dequeue_shared_queue (local.get 1) {o7})"),
                    st(25, "(local.get 0)"),
                    st(26, "(call $proxy_dequeue_shared_queue (local.get 1) {o8})"),
                    st(27, "(local.get 1)"),
                ),
            );
        let b_wat = Wat::new(v)
            .data("q", "jobs")
            .data("fromb", "from-b")
            .cb(
                "proxy_on_tick",
                &(st(0, "(call $proxy_resolve_shared_queue (i32.const 0) (i32.const 0) {q} {o0.a})")
                    + &st(1, "(call $proxy_enqueue_shared_queue (i32.load {o0.a}) {fromb})")),
            )
            .cb("proxy_on_queue_ready", "(call $bump (i32.const 1))");
        let env = Env::default();
        let mut a = H::with(&a_wat, env.clone(), |_| {});
        let root = a.root();
        assert_eq!(a.slots(0, 9), [0, 0, 0, 1, 1, 7, 1, 1, 0], "{v}");
        let q = a.out_word(0, 0);
        assert_eq!([a.out_word(1, 0), a.out_word(2, 0), a.out_word(5, 0)], [q; 3], "{v}: one queue id");
        a.out_untouched(3);
        a.out_untouched(4);

        let id = a.stream();
        a.plugin.request_headers(id, headers(&[]), true).unwrap();
        assert_eq!(a.slots(10, 2), [0, 0], "{v}: notified after the callback, not during it");
        assert_eq!(a.counter(1), 1);
        assert_eq!(a.slots(20, 4), [root, q, 0, 7], "{v}: on_queue_ready(root, queue), then EMPTY");
        assert_eq!(a.out_str(6), "item");
        a.out_untouched(7);

        a.plugin.response_headers(id, headers(&[]), true).unwrap();
        assert_eq!(a.slot(12), 0);
        assert_eq!(a.counter(1), 2);
        assert_eq!(a.slots(25, 3), [root, 0, q], "{v}");
        assert_eq!(a.out(8), (0, 0), "{v}: empty item");

        let mut b = H::with(&b_wat, env.clone(), |_| {});
        b.tick();
        assert_eq!(b.slots(0, 2), [0, 0], "{v}");
        assert_eq!(b.out_word(0, 0), q, "{v}: resolved from another VM of the same id");
        assert_eq!(b.counter(1), 0, "{v}: the enqueuing VM is not the owner");
        assert!(env.queues.has_pending());
        assert_eq!(a.counter(1), 2, "{v}: delivered when the owner runs");
        a.vm().poll().unwrap();
        assert_eq!(a.counter(1), 3, "{v}");
        assert_eq!(a.slots(25, 3), [root, 0, q]);
        assert_eq!(a.out_str(8), "from-b");
        assert!(!env.queues.has_pending());
    }
}
