//! Error statuses shared by many functions: INVALID_MEMORY_ACCESS for every pointer
//! parameter, BAD_ARGUMENT for every enum parameter, and allocator failures.

use std::collections::BTreeSet;

use wasmux::abi::proxy_funcs;
use wasmux::abi::services::{Metrics, SharedData, SharedQueues};
use wasmux::{AbiVersion, TrapKind};

use crate::harness::{Env, H, HEAP, SENTINEL, Wat, headers, load, spairs, st};
use crate::spec;

/// `proxy_*` functions that take no guest pointer at all.
const NO_POINTERS: &[&str] = &[
    "proxy_set_tick_period_milliseconds",
    "proxy_set_effective_context",
    "proxy_done",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_continue_request",
    "proxy_continue_response",
    "proxy_clear_route_cache",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_increment_metric",
    "proxy_record_metric",
];

/// One call per pointer parameter, that pointer out of range (0xFFFFFFF0, length 100 where a
/// length applies) and every other argument valid.
fn bad_pointer_calls() -> Vec<(&'static str, String)> {
    let n = "(i32.const 0) (i32.const 0)";
    let mut v: Vec<(&'static str, String)> = Vec::new();
    let mut add = |name: &'static str, args: &[&str]| {
        v.push((name, format!("(call ${name} {})", args.join(" "))));
    };
    add("proxy_log", &["(i32.const 2)", "{bad}"]);
    add("proxy_get_log_level", &["{badp}"]);
    add("proxy_get_current_time_nanoseconds", &["{badp}"]);
    add("proxy_get_configuration", &["{badp}", "{o2.b}"]);
    add("proxy_get_configuration", &["{o2.a}", "{badp}"]);
    let buf = "(i32.const 0) (i32.const 0) (i32.const 10)";
    add("proxy_get_buffer_bytes", &[buf, "{badp}", "{o2.b}"]);
    add("proxy_get_buffer_bytes", &[buf, "{o2.a}", "{badp}"]);
    add("proxy_set_buffer_bytes", &["(i32.const 0) (i32.const 0) (i32.const 0)", "{bad}"]);
    add("proxy_get_buffer_status", &["(i32.const 0)", "{badp}", "{o2.b}"]);
    add("proxy_get_buffer_status", &["(i32.const 0)", "{o2.a}", "{badp}"]);
    add("proxy_get_header_map_pairs", &["(i32.const 0)", "{badp}", "{o2.b}"]);
    add("proxy_get_header_map_pairs", &["(i32.const 0)", "{o2.a}", "{badp}"]);
    add("proxy_set_header_map_pairs", &["(i32.const 0)", "{bad}"]);
    add("proxy_get_header_map_size", &["(i32.const 0)", "{badp}"]);
    add("proxy_get_header_map_value", &["(i32.const 0)", "{bad}", "{o2}"]);
    add("proxy_get_header_map_value", &["(i32.const 0)", "{key}", "{badp}", "{o2.b}"]);
    add("proxy_get_header_map_value", &["(i32.const 0)", "{key}", "{o2.a}", "{badp}"]);
    for f in ["proxy_add_header_map_value", "proxy_replace_header_map_value"] {
        add(f, &["(i32.const 0)", "{bad}", "{val}"]);
        add(f, &["(i32.const 0)", "{key}", "{bad}"]);
    }
    add("proxy_remove_header_map_value", &["(i32.const 0)", "{bad}"]);
    add("proxy_send_local_response", &["(i32.const 200)", "{bad}", n, n, "(i32.const -1)"]);
    add("proxy_send_local_response", &["(i32.const 200)", "{val}", "{bad}", n, "(i32.const -1)"]);
    add("proxy_send_local_response", &["(i32.const 200)", "{val}", n, "{bad}", "(i32.const -1)"]);
    add("proxy_get_status", &["{badp}", "{o2}"]);
    add("proxy_get_status", &["{o2.c}", "{badp}", "{o2.b}"]);
    add("proxy_get_status", &["{o2.c}", "{o2.a}", "{badp}"]);
    let call = ["{up}", "{hdrs}", "{val}", n, "(i32.const 100)", "{o2.a}"];
    for i in [0, 1, 2, 3, 5] {
        let mut args = call;
        args[i] = if i == 5 { "{badp}" } else { "{bad}" };
        add("proxy_http_call", &args);
    }
    let grpc = ["{up}", "{svc}", "{method}", n, "{val}", "(i32.const 100)", "{o2.a}"];
    for i in [0, 1, 2, 3, 4, 6] {
        let mut args = grpc;
        args[i] = if i == 6 { "{badp}" } else { "{bad}" };
        add("proxy_grpc_call", &args);
    }
    let stream = ["{up}", "{svc}", "{method}", n, "{o2.a}"];
    for i in [0, 1, 2, 3, 4] {
        let mut args = stream;
        args[i] = if i == 4 { "{badp}" } else { "{bad}" };
        add("proxy_grpc_stream", &args);
    }
    add("proxy_grpc_send", &["(i32.const 1)", "{bad}", "(i32.const 0)"]);
    add("proxy_get_shared_data", &["{bad}", "{o2}", "{o2.c}"]);
    add("proxy_get_shared_data", &["{key}", "{badp}", "{o2.b}", "{o2.c}"]);
    add("proxy_get_shared_data", &["{key}", "{o2.a}", "{badp}", "{o2.c}"]);
    add("proxy_get_shared_data", &["{key}", "{o2}", "{badp}"]);
    add("proxy_set_shared_data", &["{bad}", "{val}", "(i32.const 0)"]);
    add("proxy_set_shared_data", &["{key2}", "{bad}", "(i32.const 0)"]);
    add("proxy_register_shared_queue", &["{bad}", "{o2.a}"]);
    add("proxy_register_shared_queue", &["{key2}", "{badp}"]);
    add("proxy_resolve_shared_queue", &["{bad}", "{key}", "{o2.a}"]);
    add("proxy_resolve_shared_queue", &[n, "{bad}", "{o2.a}"]);
    add("proxy_resolve_shared_queue", &[n, "{key}", "{badp}"]);
    add("proxy_enqueue_shared_queue", &["(i32.load {o1.a})", "{bad}"]);
    add("proxy_dequeue_shared_queue", &["(i32.load {o1.a})", "{badp}", "{o2.b}"]);
    add("proxy_dequeue_shared_queue", &["(i32.load {o1.a})", "{o2.a}", "{badp}"]);
    add("proxy_define_metric", &["(i32.const 0)", "{bad}", "{o2.a}"]);
    add("proxy_define_metric", &["(i32.const 0)", "{key2}", "{badp}"]);
    add("proxy_get_metric", &["(i32.load {o0.a})", "{badp}"]);
    add("proxy_get_property", &["{bad}", "{o2}"]);
    add("proxy_get_property", &["{pn}", "{badp}", "{o2.b}"]);
    add("proxy_get_property", &["{pn}", "{o2.a}", "{badp}"]);
    add("proxy_set_property", &["{bad}", "{val}"]);
    add("proxy_set_property", &["{key}", "{bad}"]);
    add("proxy_call_foreign_function", &["{bad}", "{val}", "{o2}"]);
    add("proxy_call_foreign_function", &["{echo}", "{bad}", "{o2}"]);
    add("proxy_call_foreign_function", &["{echo}", "{val}", "{badp}", "{o2.b}"]);
    add("proxy_call_foreign_function", &["{echo}", "{val}", "{o2.a}", "{badp}"]);
    v
}

/// Every pointer parameter of every `proxy_*` function of each version answers
/// INVALID_MEMORY_ACCESS for an out-of-range pointer, writes no out-pointer, and has no side
/// effect (no callout, metric, shared value, queue, property, header, reply or log line).
pub(crate) fn invalid_memory_access_everywhere() {
    for v in AbiVersion::ALL {
        let calls: Vec<_> = bad_pointer_calls().into_iter().filter(|(name, _)| spec::sig(name).4.contains(v)).collect();
        let no_pointers = NO_POINTERS.iter().copied().filter(|name| spec::sig(name).4.contains(v));
        let tested: BTreeSet<&str> = calls.iter().map(|(n, _)| *n).chain(no_pointers).collect();
        let all: BTreeSet<&str> = proxy_funcs(v).map(|f| f.name).collect();
        assert_eq!(tested, all, "{v}: the table covers every function with a pointer");

        let mut body = [
            "(drop (call $proxy_define_metric (i32.const 0) {key} {o0.a}))",
            "(drop (call $proxy_set_shared_data {key} {val} (i32.const 0)))",
            "(drop (call $proxy_register_shared_queue {key} {o1.a}))",
            "(drop (call $proxy_enqueue_shared_queue (i32.load {o1.a}) {val}))",
        ]
        .concat();
        for (i, (_, call)) in calls.iter().enumerate() {
            body += &st(i as u32, call);
        }
        body += "(i32.const 0)";
        let wat = Wat::new(v)
            .data("key", "key")
            .data("key2", "key2")
            .data("val", "val")
            .data("up", "up")
            .data("svc", "svc")
            .data("method", "method")
            .data("hdrs", spairs(&[(":method", "GET"), (":path", "/"), (":authority", "a")]))
            .data("pn", "plugin_name")
            .data("echo", "wasmux_echo")
            .cb("proxy_on_request_headers", &body);
        let mut h = H::new(&wat);
        let id = h.stream();
        let action = h.plugin.request_headers(id, headers(&[(":path", "/"), ("key", "v")]), true).unwrap();
        let got = h.slots(0, calls.len() as u32);
        let wrong: Vec<String> =
            calls.iter().zip(&got).filter(|(_, s)| **s != 6).map(|((_, call), s)| format!("{call} -> {s}")).collect();
        assert!(wrong.is_empty(), "{v}: expected INVALID_MEMORY_ACCESS (6):\n{}", wrong.join("\n"));
        h.out_untouched(2);
        assert_eq!(h.out_word(2, 2), SENTINEL, "{v}: no partial write");
        assert_eq!(action, wasmux::Action::Continue, "{v}: no local reply was sent");
        let s = h.http(id);
        assert_eq!(s.local_reply, None);
        assert!(s.properties.is_empty());
        assert_eq!(s.request_headers, headers(&[(":path", "/"), ("key", "v")]));
        assert!(h.env.callouts.events().is_empty(), "{v}: nothing dispatched");
        assert_eq!(h.env.metrics.snapshot().len(), 1, "{v}: only the setup metric");
        let shared: Vec<Vec<u8>> = h.env.shared.entries("hc-vm").into_iter().map(|(k, _, _)| k).collect();
        assert_eq!(shared, [b"key".to_vec()], "{v}: only the setup value");
        assert_eq!(h.env.queues.resolve("hc-vm", b"key2"), None, "{v}: no queue registered");
        let queue = h.out_word(1, 0);
        assert_eq!(h.env.queues.dequeue(queue).as_deref(), Ok(&b"val"[..]), "{v}: item still queued");
        assert!(h.env.logs().is_empty(), "{v}: nothing logged");
    }
}

/// Unknown enum values are BAD_ARGUMENT: map type > 7, buffer type > 8 (> 5 in 0.1.0), log
/// level > 5, stream type > 3, metric type > 2; unknown context ids too.
pub(crate) fn bad_enum_arguments() {
    for v in AbiVersion::ALL {
        let mut calls: Vec<String> = Vec::new();
        for map in ["8", "-1"] {
            let m = format!("(i32.const {map})");
            calls.push(format!("(call $proxy_get_header_map_pairs {m} {{o3}})"));
            calls.push(format!("(call $proxy_set_header_map_pairs {m} {{pairs}})"));
            calls.push(format!("(call $proxy_get_header_map_size {m} {{o3.a}})"));
            calls.push(format!("(call $proxy_get_header_map_value {m} {{key}} {{o3}})"));
            calls.push(format!("(call $proxy_add_header_map_value {m} {{key}} {{val}})"));
            calls.push(format!("(call $proxy_replace_header_map_value {m} {{key}} {{val}})"));
            calls.push(format!("(call $proxy_remove_header_map_value {m} {{key}})"));
        }
        let buffers: &[&str] = if v == AbiVersion::V0_1_0 { &["6", "7", "8", "9", "-1"] } else { &["9", "-1"] };
        for b in buffers {
            let b = format!("(i32.const {b})");
            calls.push(format!("(call $proxy_get_buffer_bytes {b} (i32.const 0) (i32.const 10) {{o3}})"));
            calls.push(format!("(call $proxy_set_buffer_bytes {b} (i32.const 0) (i32.const 0) {{val}})"));
            calls.push(format!("(call $proxy_get_buffer_status {b} {{o3.a}} {{o3.b}})"));
        }
        for level in ["6", "-1"] {
            calls.push(format!("(call $proxy_log (i32.const {level}) {{val}})"));
        }
        if v != AbiVersion::V0_1_0 {
            for ty in ["4", "-1"] {
                calls.push(format!("(call $proxy_continue_stream (i32.const {ty}))"));
                calls.push(format!("(call $proxy_close_stream (i32.const {ty}))"));
            }
        }
        for ty in ["3", "-1"] {
            calls.push(format!("(call $proxy_define_metric (i32.const {ty}) {{key}} {{o3.a}})"));
        }
        calls.push("(call $proxy_set_effective_context (i32.const 12345))".into());
        let body: String = calls.iter().enumerate().map(|(i, c)| st(i as u32, c)).collect::<String>() + "(i32.const 0)";
        let wat = Wat::new(v)
            .data("key", "key")
            .data("val", "val")
            .data("pairs", spairs(&[("a", "b")]))
            .cb("proxy_on_request_headers", &body);
        let mut h = H::new(&wat);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[("key", "v")]), true).unwrap();
        let got = h.slots(0, calls.len() as u32);
        let wrong: Vec<String> =
            calls.iter().zip(&got).filter(|(_, s)| **s != 2).map(|(c, s)| format!("{c} -> {s}")).collect();
        assert!(wrong.is_empty(), "{v}: expected BAD_ARGUMENT (2):\n{}", wrong.join("\n"));
        h.out_untouched(3);
        assert_eq!(h.http(id).request_headers, headers(&[("key", "v")]));
        assert!(h.env.metrics.snapshot().is_empty());
    }
}

/// The host allocates through the guest: a null or out-of-range block is
/// INVALID_MEMORY_ACCESS, a trapping allocator fails the callback with that trap, and
/// `proxy_on_memory_allocate` serves when `malloc` is absent.
pub(crate) fn allocator_failures() {
    for v in AbiVersion::ALL {
        let malloc = format!(
            "(func (export \"malloc\") (param $n i32) (result i32) (local $p i32)
               (call $bump (i32.const 5))
               (if (i32.eq (call $ld (i32.const 50)) (i32.const 0)) (then (return (i32.const 0))))
               (if (i32.eq (call $ld (i32.const 50)) (i32.const 1)) (then (return (i32.const {}))))
               (if (i32.eq (call $ld (i32.const 50)) (i32.const 2)) (then unreachable))
               (local.set $p (global.get $heap))
               (global.set $heap (i32.add (global.get $heap) (i32.const 64)))
               (local.get $p))",
            crate::harness::MEM_END - 2
        );
        let mode = |m: u32| format!("(call $st (i32.const 50) (i32.const {m}))");
        let wat = Wat::new(v).without_malloc().data("key", "key").func(&malloc).cb(
            "proxy_on_request_headers",
            &[
                mode(0),
                st(0, "(call $proxy_get_header_map_value (i32.const 0) {key} {o0})"),
                mode(1),
                st(1, "(call $proxy_get_header_map_value (i32.const 0) {key} {o1})"),
                mode(3),
                st(2, "(call $proxy_get_header_map_value (i32.const 0) {key} {o2})"),
                mode(2),
                st(3, "(call $proxy_get_header_map_value (i32.const 0) {key} {o3})"),
                "(i32.const 0)".into(),
            ]
            .concat(),
        );
        let mut h = H::new(&wat);
        let id = h.stream();
        let err = h.vm().on_request_headers(id, headers(&[("key", "value")]), true).unwrap_err();
        let trap = err.trap().unwrap_or_else(|| panic!("{v}: expected a trap, got {err}"));
        assert_eq!(trap.kind, TrapKind::Unreachable, "{v}");
        assert_eq!(trap.export.as_deref(), Some("proxy_on_request_headers"), "{v}");
        assert_eq!(h.slots(0, 4), [6, 6, 0, SENTINEL], "{v}");
        assert_eq!(h.counter(5), 4, "{v}: one allocation per call");
        h.out_untouched(0);
        h.out_untouched(1);
        assert_eq!(h.out_str(2), "value");
        h.out_untouched(3);
        assert!(h.vm().failure().is_some());

        // `proxy_on_memory_allocate` as the only allocator.
        let wat = Wat::new(v)
            .without_malloc()
            .data("key", "key")
            .func(
                "(func (export \"proxy_on_memory_allocate\") (param $n i32) (result i32) (local $p i32)
                   (call $bump (i32.const 6))
                   (local.set $p (global.get $heap))
                   (global.set $heap (i32.add (global.get $heap) (i32.const 64)))
                   (local.get $p))",
            )
            .cb(
                "proxy_on_request_headers",
                &(st(0, "(call $proxy_get_header_map_value (i32.const 0) {key} {o0})") + "(i32.const 0)"),
            );
        let compiled = load(&wat, &Env::default(), |_| {}).unwrap();
        assert_eq!(compiled.info().allocator, "proxy_on_memory_allocate");
        let mut h = H::new(&wat);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[("key", "value")]), true).unwrap();
        assert_eq!((h.slot(0), h.counter(6)), (0, 1), "{v}");
        assert_eq!(h.out(0).0, HEAP);
        assert_eq!(h.out_str(0), "value");
    }
}
