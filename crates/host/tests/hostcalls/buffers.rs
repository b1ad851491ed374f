//! `proxy_get_buffer_bytes`, `proxy_set_buffer_bytes`, `proxy_get_buffer_status` on every
//! buffer type.

use wasmux::{AbiVersion, Action};

use crate::harness::{Env, H, Wat, headers, st};

/// Reads (slices, clamping, empty results without allocation), writes (prepend, append,
/// splice, replace) and status (size, end-of-stream flag) on the request body; Continue
/// releases the rewritten body, Pause keeps it buffered.
pub(crate) fn request_body_get_set_and_status() {
    for v in AbiVersion::ALL {
        let first = [
            st(0, "(local.get 1)"),
            st(1, "(local.get 2)"),
            st(2, "(call $proxy_get_buffer_status (i32.const 0) {o0.a} {o0.b})"),
            st(3, "(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 5) {o1})"),
            st(4, "(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 6) (i32.const -1) {o2})"),
            st(5, "(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 1) (i32.const -1) {o3})"),
            st(6, "(call $mallocs)"),
            st(7, "(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 100) (i32.const 5) {o4})"),
            st(8, "(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 3) (i32.const 0) {o5})"),
            st(9, "(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 11) (i32.const 10) {o6})"),
            st(10, "(call $mallocs)"),
            st(11, "(call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0) {pre})"),
            st(12, "(call $proxy_set_buffer_bytes (i32.const 0) (i32.const -1) (i32.const 0) {app})"),
            st(13, "(call $proxy_set_buffer_bytes (i32.const 0) (i32.const 15) (i32.const 0) {dot})"),
            st(14, "(call $proxy_set_buffer_bytes (i32.const 0) (i32.const 2) (i32.const 3) {j})"),
            st(15, "(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const -1) {o7})"),
            st(16, "(call $proxy_get_buffer_status (i32.const 0) {o8.a} {o8.b})"),
        ]
        .concat();
        let second = [
            st(20, "(local.get 1)"),
            st(21, "(local.get 2)"),
            st(22, "(call $proxy_get_buffer_status (i32.const 0) {o9.a} {o9.b})"),
            st(23, "(call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const -1) {new})"),
            st(
                24,
                "(call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))",
            ),
            st(25, "(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const -1) {o10})"),
        ]
        .concat();
        let wat =
            Wat::new(v).data("pre", "<<").data("app", ">>").data("dot", ".").data("j", "J").data("new", "new").cb(
                "proxy_on_request_body",
                &format!(
                    "(call $bump (i32.const 0))
                     (if (result i32) (i32.eq (call $cnt (i32.const 0)) (i32.const 1))
                       (then {first} (i32.const 1))
                       (else {second} (i32.const 0)))"
                ),
            );
        let mut h = H::new(&wat);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[(":method", "POST")]), false).unwrap();
        assert_eq!(h.plugin.request_body(id, b"hello world", false).unwrap(), Action::Pause);
        assert_eq!(h.slots(0, 17), [11, 0, 0, 0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0], "{v}");
        assert_eq!((h.out_word(0, 0), h.out_word(0, 1)), (11, 0), "{v}: size, no end of stream");
        assert_eq!(h.out_str(1), "hello");
        assert_eq!(h.out_str(2), "world", "{v}: max 0xFFFFFFFF clamps");
        assert_eq!(h.out_str(3), "ello world");
        for k in 4..7 {
            assert_eq!(h.out(k), (0, 0), "{v}: empty slice of area {k}");
        }
        assert_eq!(h.out_str(7), "<<Jlo world>>.", "{v}: prepend, append, append at len, splice");
        assert_eq!((h.out_word(8, 0), h.out_word(8, 1)), (14, 0));
        let s = h.http(id);
        assert_eq!(s.request_body.buffered, b"<<Jlo world>>.", "{v}: paused body stays buffered");
        assert!(s.request_body.sent.is_empty());

        assert_eq!(h.plugin.request_body(id, b"!", true).unwrap(), Action::Continue);
        assert_eq!(h.slots(20, 6), [15, 1, 0, 0, 0, 0], "{v}");
        assert_eq!((h.out_word(9, 0), h.out_word(9, 1)), (15, 1), "{v}: end of stream flag");
        assert_eq!(h.out_str(10), "new", "{v}: start 0, size >= len replaces");
        let s = h.http(id);
        assert_eq!(s.request_body.sent, b"new", "{v}: Continue releases the rewritten body");
        assert!(s.request_body.buffered.is_empty());
    }
}

/// Buffers that exist but are empty give (0, 0) without allocating; buffers that do not exist
/// in the current callback are NOT_FOUND for get, set and status.
pub(crate) fn empty_and_missing_buffers() {
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .data("x", "x")
            .cb(
                "proxy_on_request_headers",
                &[
                    st(0, "(call $proxy_get_buffer_status (i32.const 0) {o0.a} {o0.b})"),
                    st(1, "(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const -1) {o1})"),
                    st(2, "(call $proxy_get_buffer_bytes (i32.const 1) (i32.const 0) (i32.const -1) {o2})"),
                    st(3, "(call $proxy_get_buffer_bytes (i32.const 2) (i32.const 0) (i32.const -1) {o3})"),
                    st(4, "(call $proxy_get_buffer_bytes (i32.const 3) (i32.const 0) (i32.const -1) {o3})"),
                    st(5, "(call $proxy_get_buffer_bytes (i32.const 4) (i32.const 0) (i32.const -1) {o3})"),
                    st(6, "(call $proxy_get_buffer_bytes (i32.const 5) (i32.const 0) (i32.const -1) {o3})"),
                    st(7, "(call $proxy_get_buffer_status (i32.const 4) {o3.a} {o3.b})"),
                    st(8, "(call $proxy_set_buffer_bytes (i32.const 4) (i32.const 0) (i32.const 0) {x})"),
                    st(9, "(call $proxy_set_buffer_bytes (i32.const 2) (i32.const 0) (i32.const 0) {x})"),
                    st(10, "(call $mallocs)"),
                    "(i32.const 0)".into(),
                ]
                .concat(),
            )
            .cb(
                "proxy_on_tick",
                &[
                    st(20, "(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const -1) {o4})"),
                    st(21, "(call $proxy_get_buffer_status (i32.const 1) {o4.a} {o4.b})"),
                    st(22, "(call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0) {x})"),
                ]
                .concat(),
            )
            .cb(
                "proxy_on_new_connection",
                &[
                    st(30, "(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const -1) {o5})"),
                    st(31, "(call $proxy_get_buffer_status (i32.const 2) {o6.a} {o6.b})"),
                    st(32, "(call $proxy_set_buffer_bytes (i32.const 1) (i32.const 0) (i32.const 0) {x})"),
                    "(i32.const 0)".into(),
                ]
                .concat(),
            );
        let mut h = H::new(&wat);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[(":path", "/")]), true).unwrap();
        assert_eq!(h.slots(0, 11), [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0], "{v}");
        assert_eq!((h.out_word(0, 0), h.out_word(0, 1)), (0, 1), "{v}: empty, end of stream");
        assert_eq!(h.out(1), (0, 0));
        assert_eq!(h.out(2), (0, 0));
        h.out_untouched(3);
        h.tick();
        assert_eq!(h.slots(20, 3), [1, 1, 1], "{v}: no stream buffers in a root context");
        h.out_untouched(4);
        let (tcp, action) = h.plugin.tcp_stream().unwrap();
        assert_eq!(action, Action::Continue);
        assert_eq!(h.slots(30, 3), [1, 0, 1], "{v}: TCP stream has no HTTP bodies");
        assert_eq!((h.out_word(6, 0), h.out_word(6, 1)), (0, 0));
        assert!(h.tcp(tcp).downstream.buffered.is_empty());
    }
}

/// HTTP_RESPONSE_BODY, DOWNSTREAM_DATA and UPSTREAM_DATA in their callbacks.
pub(crate) fn response_body_and_tcp_data() {
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .data("upper", "RESP")
            .data("plus", "+")
            .data("caret", "^")
            .cb(
                "proxy_on_response_body",
                &[
                    st(0, "(local.get 1)"),
                    st(1, "(call $proxy_get_buffer_bytes (i32.const 1) (i32.const 0) (i32.const -1) {o0})"),
                    st(2, "(call $proxy_set_buffer_bytes (i32.const 1) (i32.const 0) (i32.const -1) {upper})"),
                    st(3, "(call $proxy_get_buffer_status (i32.const 1) {o1.a} {o1.b})"),
                    "(i32.const 0)".into(),
                ]
                .concat(),
            )
            .cb(
                "proxy_on_downstream_data",
                &[
                    st(10, "(local.get 1)"),
                    st(11, "(local.get 2)"),
                    st(12, "(call $proxy_get_buffer_bytes (i32.const 2) (i32.const 0) (i32.const -1) {o2})"),
                    st(13, "(call $proxy_set_buffer_bytes (i32.const 2) (i32.const -1) (i32.const 0) {plus})"),
                    st(14, "(call $proxy_get_buffer_status (i32.const 2) {o3.a} {o3.b})"),
                    st(15, "(call $proxy_get_buffer_bytes (i32.const 3) (i32.const 0) (i32.const -1) {o4})"),
                    "(i32.const 0)".into(),
                ]
                .concat(),
            )
            .cb(
                "proxy_on_upstream_data",
                &[
                    st(20, "(call $proxy_get_buffer_bytes (i32.const 3) (i32.const 0) (i32.const -1) {o5})"),
                    st(21, "(call $proxy_set_buffer_bytes (i32.const 3) (i32.const 0) (i32.const 0) {caret})"),
                    st(22, "(call $proxy_get_buffer_status (i32.const 3) {o6.a} {o6.b})"),
                    "(i32.const 1)".into(),
                ]
                .concat(),
            );
        let mut h = H::new(&wat);
        let id = h.stream();
        h.plugin.response_headers(id, headers(&[(":status", "200")]), false).unwrap();
        assert_eq!(h.plugin.response_body(id, b"resp-body", true).unwrap(), Action::Continue);
        assert_eq!(h.slots(0, 4), [9, 0, 0, 0], "{v}");
        assert_eq!(h.out_str(0), "resp-body");
        assert_eq!((h.out_word(1, 0), h.out_word(1, 1)), (4, 1));
        assert_eq!(h.http(id).response_body.sent, b"RESP");

        let (tcp, _) = h.plugin.tcp_stream().unwrap();
        assert_eq!(h.plugin.downstream_data(tcp, b"down", false).unwrap(), Action::Continue);
        assert_eq!(h.slots(10, 6), [4, 0, 0, 0, 0, 0], "{v}");
        assert_eq!(h.out_str(2), "down");
        assert_eq!((h.out_word(3, 0), h.out_word(3, 1)), (5, 0));
        assert_eq!(h.out(4), (0, 0), "{v}: no upstream data yet");
        assert_eq!(h.tcp(tcp).downstream.sent, b"down+");
        assert_eq!(h.plugin.upstream_data(tcp, b"up", true).unwrap(), Action::Pause);
        assert_eq!(h.slots(20, 3), [0, 0, 0], "{v}");
        assert_eq!(h.out_str(5), "up");
        assert_eq!((h.out_word(6, 0), h.out_word(6, 1)), (3, 1));
        let t = h.tcp(tcp);
        assert_eq!((t.upstream.buffered.as_slice(), t.upstream.sent.as_slice()), (&b"^up"[..], &b""[..]));
    }
}

/// VM_CONFIGURATION (6), PLUGIN_CONFIGURATION (7) and FOREIGN_FUNCTION_ARGUMENTS (8) exist
/// from 0.2.0: readable configuration, read-only; 0.1.0 rejects the three types.
pub(crate) fn configuration_buffers_by_version() {
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .data("x", "x")
            .cb(
                "proxy_on_vm_start",
                &(st(12, "(call $proxy_get_buffer_bytes (i32.const 6) (i32.const 0) (i32.const -1) {o8})")
                    + "(i32.const 1)"),
            )
            .cb(
                "proxy_on_configure",
                &(st(10, "(call $proxy_get_buffer_bytes (i32.const 7) (i32.const 0) (i32.const -1) {o7})")
                    + "(i32.const 1)"),
            )
            .cb(
                "proxy_on_request_headers",
                &[
                    st(0, "(call $proxy_get_buffer_bytes (i32.const 6) (i32.const 0) (i32.const -1) {o0})"),
                    st(1, "(call $proxy_get_buffer_bytes (i32.const 7) (i32.const 0) (i32.const -1) {o1})"),
                    st(2, "(call $proxy_get_buffer_status (i32.const 6) {o2.a} {o2.b})"),
                    st(3, "(call $proxy_get_buffer_status (i32.const 7) {o3.a} {o3.b})"),
                    st(4, "(call $proxy_set_buffer_bytes (i32.const 6) (i32.const 0) (i32.const 0) {x})"),
                    st(5, "(call $proxy_set_buffer_bytes (i32.const 7) (i32.const 0) (i32.const 0) {x})"),
                    st(6, "(call $proxy_get_buffer_bytes (i32.const 8) (i32.const 0) (i32.const -1) {o4})"),
                    st(7, "(call $proxy_get_buffer_status (i32.const 8) {o5.a} {o5.b})"),
                    st(8, "(call $proxy_set_buffer_bytes (i32.const 8) (i32.const 0) (i32.const 0) {x})"),
                    st(9, "(call $proxy_get_buffer_bytes (i32.const 7) (i32.const 2) (i32.const 6) {o6})"),
                    "(i32.const 0)".into(),
                ]
                .concat(),
            );
        let mut h = H::with(&wat, Env::default(), |o| {
            o.vm_configuration = b"vm-cfg".to_vec();
            o.plugin_configuration = b"plugin-cfg".to_vec();
        });
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), true).unwrap();
        if v == AbiVersion::V0_1_0 {
            assert_eq!(h.slots(0, 10), [2; 10], "{v}: types 6..8 do not exist in 0.1.0");
            assert_eq!((h.slot(10), h.slot(12)), (2, 2));
            for k in [0, 1, 2, 3, 4, 5, 6, 7, 8] {
                h.out_untouched(k);
            }
        } else {
            assert_eq!(h.slots(0, 10), [0, 0, 0, 0, 2, 2, 1, 1, 1, 0], "{v}");
            assert_eq!(h.out_str(0), "vm-cfg");
            assert_eq!(h.out_str(1), "plugin-cfg");
            assert_eq!((h.out_word(2, 0), h.out_word(2, 1)), (6, 1));
            assert_eq!((h.out_word(3, 0), h.out_word(3, 1)), (10, 1));
            assert_eq!(h.out_str(6), "ugin-c");
            assert_eq!((h.slot(10), h.slot(12)), (0, 0));
            assert_eq!(h.out_str(7), "plugin-cfg", "{v}: plugin configuration in on_configure");
            assert_eq!(h.out_str(8), "vm-cfg", "{v}: VM configuration in on_vm_start");
        }
    }
}

/// FOREIGN_FUNCTION_ARGUMENTS inside `proxy_on_foreign_function` (0.2.x); 0.1.0 has no such
/// callback, so the host never calls it.
pub(crate) fn foreign_function_arguments_buffer() {
    for v in AbiVersion::ALL {
        let wat = Wat::new(v).data("x", "x").cb(
            "proxy_on_foreign_function",
            &[
                "(call $bump (i32.const 0))".to_string(),
                st(0, "(local.get 0)"),
                st(1, "(local.get 1)"),
                st(2, "(local.get 2)"),
                st(3, "(call $proxy_get_buffer_bytes (i32.const 8) (i32.const 0) (i32.const -1) {o0})"),
                st(4, "(call $proxy_get_buffer_status (i32.const 8) {o1.a} {o1.b})"),
                st(5, "(call $proxy_set_buffer_bytes (i32.const 8) (i32.const -1) (i32.const 0) {x})"),
                st(6, "(call $proxy_get_buffer_bytes (i32.const 8) (i32.const 0) (i32.const -1) {o2})"),
            ]
            .concat(),
        );
        let mut h = H::new(&wat);
        let root = h.root();
        h.vm().on_foreign_function(root, 7, b"fargs".to_vec()).unwrap();
        if v == AbiVersion::V0_1_0 {
            assert_eq!(h.counter(0), 0, "0.1.0 has no proxy_on_foreign_function");
            continue;
        }
        assert_eq!(h.counter(0), 1);
        assert_eq!(h.slots(0, 7), [root, 7, 5, 0, 0, 0, 0], "{v}");
        assert_eq!(h.out_str(0), "fargs");
        assert_eq!((h.out_word(1, 0), h.out_word(1, 1)), (5, 1));
        assert_eq!(h.out_str(2), "fargsx");
        assert!(h.vm().on_foreign_function(12345, 1, Vec::new()).is_err(), "not a root context");
    }
}
