//! Host-side quotas: every store a guest can grow through a host function stops at its quota,
//! with the quota's status (or a truncation, for logs), a count per quota, and a `quota` trap
//! for a guest that keeps going.

use wasmux::abi::services::SharedData;
use wasmux::{AbiVersion, Quota, Quotas, TrapKind};

use crate::harness::{Env, H, Wat, headers, st};

const OK: u32 = 0;
const BAD_ARGUMENT: u32 = 2;
const INTERNAL_FAILURE: u32 = 10;

/// A plugin with `quotas` changed by `f`.
fn with_quotas(wat: &Wat, f: impl FnOnce(&mut Quotas)) -> H {
    H::with(wat, Env::default(), |o| f(&mut o.limits.quotas))
}

/// Runs `body` (statements storing into result slots) in `proxy_on_request_headers`.
fn on_headers(v: AbiVersion, data: &[(&str, &[u8])], body: &[String]) -> Wat {
    let mut w = Wat::new(v);
    for (name, bytes) in data {
        w = w.data(name, bytes);
    }
    let mut text = body.concat();
    text.push_str("(i32.const 0)");
    w.cb("proxy_on_request_headers", &text)
}

/// Header maps: count and bytes per map, for adds, replaces and whole-map sets; the map stays
/// as it was when refused.
pub(crate) fn header_map_quotas() {
    for v in AbiVersion::ALL {
        let big = vec![b'v'; 45];
        let pairs4 = crate::harness::spairs(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]);
        let wat = on_headers(
            v,
            &[("k1", b"k1"), ("k2", b"k2"), ("k3", b"k3"), ("x", b"x"), ("big", &big), ("p4", &pairs4)],
            &[
                st(0, "(call $proxy_add_header_map_value (i32.const 0) {k1} {x})"),
                st(1, "(call $proxy_add_header_map_value (i32.const 0) {k2} {x})"),
                // The map already holds one header: three is the count quota.
                st(2, "(call $proxy_add_header_map_value (i32.const 0) {k3} {x})"),
                // Replacing an existing value keeps the count; growing the map past 50 bytes
                // (8 - 1 + 45) fails.
                st(3, "(call $proxy_replace_header_map_value (i32.const 0) {k1} {big})"),
                st(4, "(call $proxy_replace_header_map_value (i32.const 0) {k1} {k3})"),
                // An absent name is an add: over the count.
                st(5, "(call $proxy_replace_header_map_value (i32.const 0) {k3} {x})"),
                // A whole map of four entries is over the count.
                st(6, "(call $proxy_set_header_map_pairs (i32.const 0) {p4})"),
            ],
        );
        let mut h = with_quotas(&wat, |q| {
            q.max_header_count = 3;
            q.max_header_bytes = 50;
        });
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[("h", "0")]), false).unwrap();
        assert_eq!(
            h.slots(0, 7),
            [OK, OK, INTERNAL_FAILURE, BAD_ARGUMENT, OK, INTERNAL_FAILURE, INTERNAL_FAILURE],
            "{v}"
        );
        let m = h.http(id).request_headers;
        // The replaced `k1` is last, as in Envoy.
        assert_eq!(crate::harness::entries(&m), crate::harness::owned(&[("h", "0"), ("k2", "x"), ("k1", "k3")]), "{v}");
        let counts = h.plugin.quota_counts();
        assert_eq!((counts.get(Quota::HeaderCount), counts.get(Quota::HeaderBytes)), (3, 1), "{v}");
        assert_eq!(h.plugin.stats().quota_hits, 4, "{v}");
    }
}

/// Bodies: `proxy_set_buffer_bytes` cannot grow a body past its quota, and a chunk from the
/// proxy that would overflow a paused (buffering) stream is answered as Envoy does: 413 for a
/// request, 500 for a response, without calling the filter.
pub(crate) fn body_quotas() {
    for v in AbiVersion::ALL {
        let data = vec![b'd'; 60];
        let w = Wat::new(v).data("data", &data).data("small", b"ss").cb(
            "proxy_on_request_body",
            &[
                st(0, "(call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0) {data})"),
                st(1, "(call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0) {small})"),
                "(call $bump (i32.const 0)) (i32.const 1)".into(),
            ]
            .concat(),
        );
        let wat = w.cb("proxy_on_response_body", "(call $bump (i32.const 1)) (i32.const 1)");
        let mut h = with_quotas(&wat, |q| q.max_body_bytes = 64);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), false).unwrap();
        // 10 bytes buffered, then the filter tries to prepend 60 (refused) and 2 (accepted).
        h.plugin.request_body(id, &[b'a'; 10], false).unwrap();
        assert_eq!(h.slots(0, 2), [BAD_ARGUMENT, OK], "{v}");
        assert_eq!(h.http(id).request_body.buffered.len(), 12, "{v}");
        // 12 + 60 > 64: the proxy's chunk overflows the paused stream.
        let a = h.plugin.request_body(id, &[b'b'; 60], false).unwrap();
        assert_eq!(a, wasmux::Action::Pause, "{v}");
        assert_eq!(h.counter(0), 1, "{v}: the filter was not called");
        let reply = h.http(id).local_reply.expect("a local reply");
        assert_eq!((reply.status_code, reply.details.as_str()), (413, "request_payload_too_large"), "{v}");

        let id = h.stream();
        h.plugin.response_headers(id, headers(&[]), false).unwrap();
        h.plugin.response_body(id, &[b'c'; 64], false).unwrap();
        h.plugin.response_body(id, &[b'c'; 1], false).unwrap();
        assert_eq!(h.counter(1), 1, "{v}");
        let reply = h.http(id).local_reply.expect("a local reply");
        assert_eq!((reply.status_code, reply.details.as_str()), (500, "response_payload_too_large"), "{v}");
        assert_eq!(h.plugin.quota_counts().get(Quota::BodyBytes), 3, "{v}");
    }
}

/// Logs: a long line is cut with a marker; once a callback has logged its quota, later lines
/// are dropped and one line says how many.
pub(crate) fn log_quotas() {
    for v in AbiVersion::ALL {
        let long = "x".repeat(100);
        let wat = on_headers(
            v,
            &[("long", long.as_bytes()), ("short", b"0123456789")],
            &[
                st(0, "(call $proxy_log (i32.const 2) {long})"),
                st(1, "(call $proxy_log (i32.const 2) {short})"),
                st(2, "(call $proxy_log (i32.const 2) {short})"),
                st(3, "(call $proxy_log (i32.const 2) {short})"),
                st(4, "(call $proxy_log (i32.const 2) {short})"),
            ],
        );
        let mut h = with_quotas(&wat, |q| {
            q.max_log_line_bytes = 32;
            q.max_log_bytes_per_callback = 50;
        });
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), false).unwrap();
        assert_eq!(h.slots(0, 5), [OK; 5], "{v}: logging never fails");
        let lines: Vec<String> = h.env.logs().into_iter().map(|r| r.message).collect();
        assert_eq!(
            lines,
            [
                format!("{}…[truncated 68 bytes]", "x".repeat(32)),
                "0123456789".into(),
                // 32 + 10 + 10 > 50: the third line is cut to what is left of the quota, the
                // last two are dropped.
                "01234567…[truncated 2 bytes]".into(),
                "[wasmux] 2 log lines dropped: the callback logged its quota of 50 bytes".into(),
            ],
            "{v}"
        );
        let counts = h.plugin.quota_counts();
        assert_eq!((counts.get(Quota::LogLine), counts.get(Quota::LogBytes)), (1, 2), "{v}");
        // The next callback has a fresh quota.
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), false).unwrap();
        assert_eq!(h.env.logs().len(), 8, "{v}");
    }
}

/// Shared data: value size, keys and bytes per VM id.
pub(crate) fn shared_data_quotas() {
    for v in AbiVersion::ALL {
        let big = vec![b'v'; 30];
        let wat = on_headers(
            v,
            &[("k1", b"k1"), ("k2", b"k2"), ("k3", b"k3"), ("v", b"value"), ("big", &big)],
            &[
                st(0, "(call $proxy_set_shared_data {k1} {big} (i32.const 0))"),
                st(1, "(call $proxy_set_shared_data {k1} {v} (i32.const 0))"),
                st(2, "(call $proxy_set_shared_data {k2} {v} (i32.const 0))"),
                st(3, "(call $proxy_set_shared_data {k3} {v} (i32.const 0))"),
                // Rewriting an existing key is fine.
                st(4, "(call $proxy_set_shared_data {k2} {k3} (i32.const 0))"),
            ],
        );
        let mut h = with_quotas(&wat, |q| {
            q.max_shared_data_keys = 2;
            q.max_shared_data_value_bytes = 20;
            q.max_shared_data_bytes = 100;
        });
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), false).unwrap();
        assert_eq!(h.slots(0, 5), [BAD_ARGUMENT, OK, OK, INTERNAL_FAILURE, OK], "{v}");
        assert_eq!(h.env.shared.entries("hc-vm").len(), 2, "{v}");
        let counts = h.plugin.quota_counts();
        assert_eq!((counts.get(Quota::SharedDataValue), counts.get(Quota::SharedDataKeys)), (1, 1), "{v}");

        // Total bytes: the 32-byte entry does not fit in 20, two of 7 do, a third does not;
        // rewriting one (14 - 7 + 4) does.
        let mut h = with_quotas(&wat, |q| {
            q.max_shared_data_bytes = 20;
        });
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), false).unwrap();
        assert_eq!(h.slots(0, 5), [INTERNAL_FAILURE, OK, OK, INTERNAL_FAILURE, OK], "{v}");
        assert_eq!(h.plugin.quota_counts().get(Quota::SharedDataBytes), 2, "{v}");
    }
}

/// Shared queues: queues per VM id, items and bytes per queue; dequeuing makes room.
pub(crate) fn queue_quotas() {
    for v in AbiVersion::ALL {
        let wat = on_headers(
            v,
            &[("q1", b"q1"), ("q2", b"q2"), ("q3", b"q3"), ("item", b"item"), ("big", &[b'b'; 40])],
            &[
                st(0, "(call $proxy_register_shared_queue {q1} {o0.a})"),
                st(1, "(call $proxy_register_shared_queue {q2} {o0.b})"),
                st(2, "(call $proxy_register_shared_queue {q3} {o0.c})"),
                // Re-registering an existing queue is not a new queue.
                st(3, "(call $proxy_register_shared_queue {q1} {o0.d})"),
                st(4, "(call $proxy_enqueue_shared_queue (i32.load {o0.a}) {item})"),
                st(5, "(call $proxy_enqueue_shared_queue (i32.load {o0.a}) {item})"),
                st(6, "(call $proxy_enqueue_shared_queue (i32.load {o0.a}) {item})"),
                st(7, "(call $proxy_enqueue_shared_queue (i32.load {o0.b}) {big})"),
                st(8, "(call $proxy_dequeue_shared_queue (i32.load {o0.a}) {o1})"),
                st(9, "(call $proxy_enqueue_shared_queue (i32.load {o0.a}) {item})"),
            ],
        );
        let mut h = with_quotas(&wat, |q| {
            q.max_queues = 2;
            q.max_queue_items = 2;
            q.max_queue_bytes = 30;
        });
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), false).unwrap();
        assert_eq!(
            h.slots(0, 10),
            [OK, OK, INTERNAL_FAILURE, OK, OK, OK, INTERNAL_FAILURE, INTERNAL_FAILURE, OK, OK],
            "{v}"
        );
        let counts = h.plugin.quota_counts();
        assert_eq!([Quota::Queues, Quota::QueueItems, Quota::QueueBytes].map(|q| counts.get(q)), [1, 1, 1], "{v}");
    }
}

/// Metrics per store; histograms keep buckets, not samples.
pub(crate) fn metric_quotas() {
    for v in AbiVersion::ALL {
        let wat = on_headers(
            v,
            &[("a", b"a"), ("b", b"b"), ("c", b"c")],
            &[
                "(local $i i32)".into(),
                st(0, "(call $proxy_define_metric (i32.const 2) {a} {o0.a})"),
                st(1, "(call $proxy_define_metric (i32.const 0) {b} {o0.b})"),
                st(2, "(call $proxy_define_metric (i32.const 0) {c} {o0.c})"),
                st(3, "(call $proxy_define_metric (i32.const 0) {b} {o0.d})"),
                "(loop $l
                   (drop (call $proxy_record_metric (i32.load {o0.a}) (i64.extend_i32_u (local.get $i))))
                   (local.set $i (i32.add (local.get $i) (i32.const 1)))
                   (br_if $l (i32.lt_u (local.get $i) (i32.const 100000))))"
                    .into(),
            ],
        );
        let mut h = with_quotas(&wat, |q| q.max_metrics = 2);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), false).unwrap();
        assert_eq!(h.slots(0, 4), [OK, OK, INTERNAL_FAILURE, OK], "{v}");
        let snap = wasmux::abi::services::Metrics::snapshot(&*h.env.metrics);
        let hist = snap.iter().find(|m| m.name == "a").and_then(|m| m.histogram.clone()).expect("histogram");
        assert_eq!(hist.count(), 100_000, "{v}");
        assert_eq!(hist.sum, (0..100_000u64).sum::<u64>(), "{v}");
        assert_eq!(h.plugin.quota_counts().get(Quota::Metrics), 1, "{v}");
    }
}

/// Properties per context: count and bytes; replacing a property reuses its room.
pub(crate) fn property_quotas() {
    for v in AbiVersion::ALL {
        let wat = on_headers(
            v,
            &[("p1", b"p1"), ("p2", b"p2"), ("p3", b"p3"), ("v", b"vvvv"), ("big", &[b'b'; 20])],
            &[
                st(0, "(call $proxy_set_property {p1} {v})"),
                st(1, "(call $proxy_set_property {p2} {v})"),
                st(2, "(call $proxy_set_property {p3} {v})"),
                st(3, "(call $proxy_set_property {p1} {big})"),
                st(4, "(call $proxy_set_property {p1} {p3})"),
            ],
        );
        let mut h = with_quotas(&wat, |q| {
            q.max_properties = 2;
            q.max_property_bytes = 16;
        });
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), false).unwrap();
        assert_eq!(h.slots(0, 5), [OK, OK, INTERNAL_FAILURE, BAD_ARGUMENT, OK], "{v}");
        assert_eq!(h.http(id).properties.len(), 2, "{v}");
    }
}

/// Callouts: in flight per VM, and their bytes; a response frees a slot.
pub(crate) fn callout_quotas() {
    for v in AbiVersion::ALL {
        let hdrs = crate::harness::spairs(&[(":method", "GET"), (":path", "/"), (":authority", "a")]);
        let call = |body: &str| {
            format!(
                "(call $proxy_http_call {{up}} {{hdrs}} {body} (i32.const 0) (i32.const 0) (i32.const 1000) {{o0.a}})"
            )
        };
        let wat = on_headers(
            v,
            &[("up", b"up"), ("hdrs", &hdrs), ("body", &[b'b'; 100])],
            &[
                st(0, &call("(i32.const 0) (i32.const 0)")),
                st(1, &call("(i32.const 0) (i32.const 0)")),
                st(2, &call("(i32.const 0) (i32.const 0)")),
            ],
        );
        let mut h = with_quotas(&wat, |q| q.max_callouts = 2);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), false).unwrap();
        assert_eq!(h.slots(0, 3), [OK, OK, INTERNAL_FAILURE], "{v}");
        // A response frees a slot for the next stream.
        let token = h.out_word(0, 0);
        h.plugin.http_call_response(token, None).unwrap();
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), false).unwrap();
        assert_eq!(h.slots(0, 3), [OK, INTERNAL_FAILURE, INTERNAL_FAILURE], "{v}");
        assert_eq!(h.plugin.quota_counts().get(Quota::Callouts), 3, "{v}");

        let wat = on_headers(
            v,
            &[("up", b"up"), ("hdrs", &hdrs), ("body", &[b'b'; 100])],
            &[st(0, &call("{body}")), st(1, &call("{body}"))],
        );
        let mut h = with_quotas(&wat, |q| q.max_callout_bytes = 150);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), false).unwrap();
        assert_eq!(h.slots(0, 2), [OK, INTERNAL_FAILURE], "{v}");
        assert_eq!(h.plugin.quota_counts().get(Quota::CalloutBytes), 1, "{v}");
    }
}

/// gRPC streams: messages sent and not yet taken by the embedder are bounded; taking them
/// (`Vm::on_grpc_sent`) makes room.
pub(crate) fn grpc_pending_send_quota() {
    for v in AbiVersion::ALL {
        let send = "(call $proxy_grpc_send (i32.load {o0.a}) {msg} (i32.const 0))";
        let wat = Wat::new(v)
            .data("up", "up")
            .data("svc", "svc")
            .data("m", "m")
            .data("msg", "message")
            .cb(
                "proxy_on_request_headers",
                &[
                    st(0, "(call $proxy_grpc_stream {up} {svc} {m} (i32.const 0) (i32.const 0) {o0.a})"),
                    st(1, send),
                    st(2, send),
                    st(3, send),
                    "(i32.const 0)".into(),
                ]
                .concat(),
            )
            .cb("proxy_on_request_trailers", &[st(4, send), "(i32.const 0)".into()].concat());
        let mut h = with_quotas(&wat, |q| q.max_grpc_pending_sends = 2);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), false).unwrap();
        assert_eq!(h.slots(0, 4), [OK, OK, OK, INTERNAL_FAILURE], "{v}");
        let token = h.out_word(0, 0);
        h.vm().on_grpc_sent(token, 1);
        h.plugin.request_trailers(id, headers(&[])).unwrap();
        assert_eq!(h.slot(4), OK, "{v}");
    }
}

/// Stream-control requests per stream.
pub(crate) fn stream_control_quota() {
    for v in [AbiVersion::V0_2_0, AbiVersion::V0_2_1] {
        let wat = on_headers(
            v,
            &[],
            &[
                st(0, "(call $proxy_continue_stream (i32.const 0))"),
                st(1, "(call $proxy_continue_stream (i32.const 0))"),
                st(2, "(call $proxy_continue_stream (i32.const 0))"),
            ],
        );
        let mut h = with_quotas(&wat, |q| q.max_stream_controls = 2);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), false).unwrap();
        assert_eq!(h.slots(0, 3), [OK, OK, INTERNAL_FAILURE], "{v}");
        assert_eq!(h.http(id).control.len(), 2, "{v}");
    }
}

/// A guest that keeps asking past a full store traps with `quota` after the configured number
/// of refusals in one callback, and the failure policy answers its stream.
pub(crate) fn repeated_violations_trap() {
    for v in AbiVersion::ALL {
        let wat = on_headers(
            v,
            &[("k", b"k"), ("x", b"x")],
            &["(loop $l (drop (call $proxy_add_header_map_value (i32.const 0) {k} {x})) (br $l))".into()],
        );
        let mut h = with_quotas(&wat, |q| {
            q.max_header_count = 10;
            q.max_violations_per_callback = 50;
        });
        let id = h.stream();
        let a = h.plugin.request_headers(id, headers(&[]), false).unwrap();
        assert_eq!(a, wasmux::Action::Pause, "{v}: failed closed");
        let trap = h.plugin.take_trap().expect("a trap");
        assert_eq!(trap.kind, TrapKind::Quota, "{v}: {trap}");
        assert!(trap.message.contains("header_count"), "{v}: {trap}");
        assert_eq!(h.http(id).local_reply.map(|r| r.status_code), Some(503), "{v}");
        let counts = h.plugin.quota_counts();
        assert_eq!((counts.get(Quota::HeaderCount), counts.get(Quota::Violations)), (51, 1), "{v}");
        assert_eq!(h.http(id).request_headers.len(), 10, "{v}");
    }
}
