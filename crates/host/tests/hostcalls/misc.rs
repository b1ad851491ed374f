//! Metrics, properties and foreign functions.

use wasmux::AbiVersion;
use wasmux::abi::MetricType;
use wasmux::abi::services::{Histogram, MetricSnapshot, Metrics};

use crate::harness::{Env, H, Wat, headers, st};

/// Define (types 0..2, BAD_ARGUMENT otherwise, same name and type give the same id),
/// increment (i64 deltas; counters cannot go down), record, get (u64), NOT_FOUND for unknown
/// ids.
pub(crate) fn metrics_define_increment_record_get() {
    for v in AbiVersion::ALL {
        let c = "(i32.load {o0.a})";
        let g = "(i32.load {o1.a})";
        let hist = "(i32.load {o2.a})";
        let wat = Wat::new(v).data("c", "c").data("g", "g").data("hist", "hist").data("x", "x").cb(
            "proxy_on_vm_start",
            &[
                st(0, "(call $proxy_define_metric (i32.const 0) {c} {o0.a})"),
                st(1, "(call $proxy_define_metric (i32.const 1) {g} {o1.a})"),
                st(2, "(call $proxy_define_metric (i32.const 2) {hist} {o2.a})"),
                st(3, "(call $proxy_define_metric (i32.const 3) {x} {o3.a})"),
                st(4, "(call $proxy_define_metric (i32.const 0) {c} {o4.a})"),
                st(5, &format!("(call $proxy_increment_metric {c} (i64.const 5))")),
                st(6, &format!("(call $proxy_increment_metric {c} (i64.const -1))")),
                st(7, &format!("(call $proxy_get_metric {c} {{o5.a}})")),
                st(8, &format!("(call $proxy_record_metric {g} (i64.const 42))")),
                st(9, &format!("(call $proxy_increment_metric {g} (i64.const -2))")),
                st(10, &format!("(call $proxy_get_metric {g} {{o6.a}})")),
                st(11, &format!("(call $proxy_record_metric {hist} (i64.const 7))")),
                st(12, &format!("(call $proxy_record_metric {hist} (i64.const 9))")),
                st(13, "(call $proxy_get_metric (i32.const 9999) {o7.a})"),
                st(14, "(call $proxy_increment_metric (i32.const 9999) (i64.const 1))"),
                st(15, "(call $proxy_record_metric (i32.const 9999) (i64.const 1))"),
                st(16, "(call $proxy_define_metric (i32.const 1) {c} {o8.a})"),
                st(17, "(call $proxy_define_metric (i32.const -1) {c} {o8.a})"),
                st(18, &format!("(call $proxy_increment_metric {c} (i64.const 0x100000000))")),
                st(19, &format!("(call $proxy_get_metric {c} {{o9.a}})")),
                "(i32.const 1)".into(),
            ]
            .concat(),
        );
        let mut h = H::new(&wat);
        assert_eq!(h.slots(0, 20), [0, 0, 0, 2, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 0, 0], "{v}");
        let ids = [0, 1, 2].map(|k| h.out_word(k, 0));
        assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "{v}: {ids:?}");
        assert_eq!(h.out_word(4, 0), ids[0], "{v}: redefinition gives the same id");
        h.out_untouched(3);
        h.out_untouched(7);
        h.out_untouched(8);
        assert_eq!(h.out_u64(5), 5, "{v}");
        assert_eq!(h.out_u64(6), 40, "{v}");
        assert_eq!(h.out_u64(9), 5 + (1 << 32), "{v}: 64-bit delta");
        let snap = |name: &str, kind, value, samples: &[u64]| MetricSnapshot {
            name: name.into(),
            kind,
            value,
            histogram: (kind == MetricType::Histogram).then(|| {
                let mut h = Histogram::default();
                samples.iter().for_each(|s| h.record(*s));
                h
            }),
        };
        assert_eq!(
            h.env.metrics.snapshot(),
            [
                snap("c", MetricType::Counter, 5 + (1 << 32), &[]),
                snap("g", MetricType::Gauge, 40, &[]),
                snap("hist", MetricType::Histogram, 2, &[7, 9]),
            ],
            "{v}"
        );
    }
}

/// Properties wasmux derives (plugin names, request attributes from the headers in dotted or
/// NUL-separated paths, response code), the embedder's static properties, values set by the
/// filter (per stream, then root), empty values, and NOT_FOUND for unknown paths.
pub(crate) fn properties_derived_static_and_set() {
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .data("pn", "plugin_name")
            .data("pr", "plugin_root_id")
            .data("pv", "plugin_vm_id")
            .data("rpd", "request.path")
            .data("rpn", "request\0path")
            .data("rup", "request\0url_path")
            .data("rq", "request\0query")
            .data("rm", "request\0method")
            .data("rh", "request\0host")
            .data("rua", "request\0headers\0user-agent")
            .data("rs", "request\0scheme")
            .data("sa", "source\0address")
            .data("sad", "source.address")
            .data("unk", "no\0such")
            .data("cp", "wasm\0custom")
            .data("cv", "v-custom")
            .data("rv", "v-root")
            .data("ep", "wasm\0empty")
            .data("rc", "response\0code")
            .cb(
                "proxy_on_request_headers",
                &[
                    st(0, "(call $proxy_get_property {pn} {o0})"),
                    st(1, "(call $proxy_get_property {pr} {o1})"),
                    st(2, "(call $proxy_get_property {pv} {o2})"),
                    st(3, "(call $proxy_get_property {rpd} {o3})"),
                    st(4, "(call $proxy_get_property {rpn} {o4})"),
                    st(5, "(call $proxy_get_property {rup} {o5})"),
                    st(6, "(call $proxy_get_property {rq} {o6})"),
                    st(7, "(call $proxy_get_property {rm} {o7})"),
                    st(8, "(call $proxy_get_property {rh} {o8})"),
                    st(9, "(call $proxy_get_property {rua} {o9})"),
                    st(10, "(call $proxy_get_property {sa} {o10})"),
                    st(11, "(call $proxy_get_property {sad} {o11})"),
                    st(12, "(call $proxy_get_property {unk} {o12})"),
                    st(13, "(call $proxy_set_property {cp} {cv})"),
                    st(14, "(call $proxy_get_property {cp} {o13})"),
                    st(15, "(call $proxy_set_property (i32.const 0) (i32.const 0) {cv})"),
                    st(16, "(call $proxy_set_property {ep} (i32.const 0) (i32.const 0))"),
                    st(17, "(call $mallocs)"),
                    st(18, "(call $proxy_get_property {ep} {o14})"),
                    st(19, "(call $mallocs)"),
                    st(20, "(call $proxy_get_property {rs} {o15})"),
                    "(i32.const 0)".into(),
                ]
                .concat(),
            )
            .cb("proxy_on_response_headers", &(st(30, "(call $proxy_get_property {rc} {o16})") + "(i32.const 0)"))
            .cb(
                "proxy_on_tick",
                &[
                    st(40, "(call $proxy_get_property {rpd} {o17})"),
                    st(41, "(call $proxy_get_property {cp} {o17})"),
                    st(42, "(call $proxy_set_property {cp} {rv})"),
                    st(43, "(call $proxy_get_property {cp} {o18})"),
                    st(44, "(call $proxy_get_property {pn} {o19})"),
                ]
                .concat(),
            );
        let env = Env::default();
        env.props.insert("source.address", "10.0.0.1:1234");
        let mut h = H::with(&wat, env, |_| {});
        let id = h.stream();
        let req = [
            (":path", "/x/y?z=1"),
            (":method", "POST"),
            (":authority", "example.com"),
            (":scheme", "https"),
            ("user-agent", "ua"),
        ];
        h.plugin.request_headers(id, headers(&req), true).unwrap();
        assert_eq!(h.slots(0, 21), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 2, 0, 13, 0, 13, 0], "{v}");
        let got: Vec<String> = (0..12).map(|k| h.out_str(k)).collect();
        assert_eq!(
            got,
            [
                "hc-plugin",
                "hc-root",
                "hc-vm",
                "/x/y?z=1",
                "/x/y?z=1",
                "/x/y",
                "z=1",
                "POST",
                "example.com",
                "ua",
                "10.0.0.1:1234",
                "10.0.0.1:1234",
            ],
            "{v}"
        );
        h.out_untouched(12);
        assert_eq!(h.out_str(13), "v-custom");
        assert_eq!(h.out(14), (0, 0), "{v}: empty value without allocation");
        assert_eq!(h.out_str(15), "https");
        let props = h.http(id).properties;
        assert_eq!(props.get(&b"wasm\0custom"[..]), Some(&b"v-custom".to_vec()), "{v}: stored on the stream");

        h.plugin.response_headers(id, headers(&[(":status", "201")]), true).unwrap();
        assert_eq!(h.slot(30), 0);
        assert_eq!(h.out_bytes(16), 201i64.to_le_bytes(), "{v}: integers are 8 bytes little-endian");

        h.tick();
        assert_eq!(h.slots(40, 5), [1, 1, 0, 0, 0], "{v}: no request, no stream value in the root");
        h.out_untouched(17);
        assert_eq!(h.out_str(18), "v-root");
        assert_eq!(h.out_str(19), "hc-plugin");
    }
}

/// `proxy_call_foreign_function`: built-ins, NOT_FOUND for unknown names, the function's own
/// status on failure, empty results as (0, 0), results discarded with both out-pointers 0.
pub(crate) fn foreign_functions() {
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .data("echo", "wasmux_echo")
            .data("rev", "wasmux_reverse")
            .data("nope", "no_such_function")
            .data("crc", "clear_route_cache")
            .data("fail", "hc_fail")
            .data("args", "abc")
            .cb(
                "proxy_on_request_headers",
                &[
                    st(0, "(call $proxy_call_foreign_function {echo} {args} {o0})"),
                    st(1, "(call $proxy_call_foreign_function {rev} {args} {o1})"),
                    st(2, "(call $proxy_call_foreign_function {nope} {args} {o2})"),
                    st(3, "(call $mallocs)"),
                    st(4, "(call $proxy_call_foreign_function {crc} (i32.const 0) (i32.const 0) {o3})"),
                    st(5, "(call $proxy_call_foreign_function {echo} {args} (i32.const 0) (i32.const 0))"),
                    st(6, "(call $mallocs)"),
                    st(7, "(call $proxy_call_foreign_function {echo} (i32.const 0) (i32.const 0) {o4})"),
                    st(8, "(call $proxy_call_foreign_function {fail} {args} {o5})"),
                    "(i32.const 0)".into(),
                ]
                .concat(),
            );
        let mut h = H::new(&wat);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), true).unwrap();
        assert_eq!(h.slots(0, 9), [0, 0, 1, 2, 0, 0, 2, 0, 10], "{v}");
        assert_eq!(h.out_str(0), "abc");
        assert_eq!(h.out_str(1), "cba");
        h.out_untouched(2);
        assert_eq!(h.out(3), (0, 0));
        assert_eq!(h.out(4), (0, 0));
        h.out_untouched(5);
    }
}
