//! HTTP and gRPC callouts, their response callbacks, and `proxy_get_status`.

use std::time::Duration;

use wasmux::abi::services::{CalloutEvent, GrpcAction, GrpcCallout};
use wasmux::{AbiVersion, HttpCallResponse};

use crate::harness::{H, Wat, entries, headers, owned, spairs, st};

const NONE: &str = "(i32.const 0) (i32.const 0)";

fn http_call(slot: u32, up: &str, hdrs: &str, body: &str, trl: &str, timeout: i32, out: &str) -> String {
    st(slot, &format!("(call $proxy_http_call {up} {hdrs} {body} {trl} (i32.const {timeout}) {out})"))
}

fn callout_hdrs() -> Vec<u8> {
    spairs(&[(":method", "POST"), (":path", "/cb"), (":authority", "svc"), ("x-h", "1")])
}

/// `proxy_http_call` validates upstream, headers (pairs format, `:method`, `:path`,
/// `:authority`) and the out-pointer before dispatching; the response reaches the owning root
/// context, whose callback reads the response maps and body, and can switch to the stream.
pub(crate) fn http_call_dispatch_and_response() {
    let hdrs = callout_hdrs();
    let mut bad = hdrs.clone();
    bad.push(0);
    let no_auth = spairs(&[(":method", "GET"), (":path", "/")]);
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .data("up", "cluster_a")
            .data("other", "cluster_b")
            .data("hdrs", &hdrs)
            .data("noauth", &no_auth)
            .data("badh", &bad)
            .data("body", "ping")
            .data("trl", spairs(&[("t", "v")]))
            .data("kxh", "x-h")
            .data("kxt", "x-t")
            .data("kdone", "x-done")
            .data("vdone", "yes")
            .cb(
                "proxy_on_request_headers",
                &[
                    st(10, "(local.get 0)"),
                    http_call(0, "{up}", "{hdrs}", "{body}", "{trl}", 1500, "{o0.a}"),
                    http_call(1, "{up}", "{noauth}", NONE, NONE, 1000, "{o1.a}"),
                    http_call(2, "{up}", "{badh}", NONE, NONE, 1000, "{o1.a}"),
                    http_call(3, "{other}", "{hdrs}", NONE, NONE, 1000, "{o1.a}"),
                    http_call(4, "{up}", "{hdrs}", NONE, NONE, 0, "{badp}"),
                    st(5, "(call $proxy_get_status {o2.a} {o3})"),
                    "(i32.const 1)".into(),
                ]
                .concat(),
            )
            .cb(
                "proxy_on_http_call_response",
                &[
                    st(20, "(local.get 0)"),
                    st(21, "(local.get 1)"),
                    st(22, "(local.get 2)"),
                    st(23, "(local.get 3)"),
                    st(24, "(local.get 4)"),
                    st(25, "(call $proxy_get_status {o4.a} {o5})"),
                    st(26, "(call $proxy_get_header_map_value (i32.const 6) {kxh} {o6})"),
                    st(27, "(call $proxy_get_header_map_pairs (i32.const 6) {o7})"),
                    st(28, "(call $proxy_get_header_map_value (i32.const 7) {kxt} {o8})"),
                    st(29, "(call $proxy_get_buffer_bytes (i32.const 4) (i32.const 0) (i32.const -1) {o9})"),
                    st(30, "(call $proxy_get_buffer_status (i32.const 4) {o10.a} {o10.b})"),
                    st(31, "(call $proxy_get_header_map_value (i32.const 0) {kxh} {o11})"),
                    st(32, "(call $proxy_set_effective_context (call $ld (i32.const 10)))"),
                    st(33, "(call $proxy_add_header_map_value (i32.const 0) {kdone} {vdone})"),
                    st(34, "(call $proxy_get_header_map_size (i32.const 6) {o12.a})"),
                ]
                .concat(),
            );
        let mut h = H::new(&wat);
        h.env.callouts.set_upstreams(Some(vec!["cluster_a".into()]));
        let root = h.root();
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[(":path", "/")]), true).unwrap();
        assert_eq!(h.slots(0, 6), [0, 2, 2, 2, 6, 0], "{v}");
        h.out_untouched(1);
        assert_eq!((h.out_word(2, 0), h.out(3)), (0, (0, 0)), "{v}: no callout status outside a response");
        let token = h.out_word(0, 0);
        let events = h.env.callouts.events();
        assert_eq!(events.len(), 1, "{v}: only the valid call is dispatched: {events:?}");
        let CalloutEvent::Http(call) = &events[0] else { panic!("{events:?}") };
        assert_eq!(call.token, token);
        assert_eq!(call.upstream, "cluster_a");
        assert_eq!(
            entries(&call.headers),
            owned(&[(":method", "POST"), (":path", "/cb"), (":authority", "svc"), ("x-h", "1")])
        );
        assert_eq!(call.body, b"ping");
        assert_eq!(entries(&call.trailers), owned(&[("t", "v")]));
        assert_eq!(call.timeout, Duration::from_millis(1500));

        let response = HttpCallResponse {
            headers: headers(&[(":status", "200"), ("x-h", "hv")]),
            body: b"cbody".to_vec(),
            trailers: headers(&[("x-t", "tv")]),
        };
        h.vm().on_http_call_response(token, Some(response)).unwrap();
        assert_eq!(h.slots(20, 15), [root, token, 2, 5, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], "{v}");
        assert_eq!((h.out_word(4, 0), h.out(5)), (0, (0, 0)), "{v}: status of a successful call");
        assert_eq!(h.out_str(6), "hv");
        assert_eq!(h.out_bytes(7), spairs(&[(":status", "200"), ("x-h", "hv")]));
        assert_eq!(h.out_str(8), "tv");
        assert_eq!(h.out_str(9), "cbody");
        assert_eq!((h.out_word(10, 0), h.out_word(10, 1)), (5, 1));
        h.out_untouched(11);
        assert_eq!(h.out_word(12, 0), 4 + 10 + 7 + 3 + 10 + 3 + 2);
        assert_eq!(h.http(id).request_headers.get(b"x-done"), Some(&b"yes"[..]), "{v}: via the effective context");
        assert!(h.vm().on_http_call_response(token, None).is_err(), "{v}: a token is answered once");
        assert!(h.vm().on_http_call_response(9999, None).is_err());
    }
}

/// A failed call (`None` response): zero counts, no response maps or body (NOT_FOUND), and
/// `proxy_get_status` gives INTERNAL_FAILURE with a message; out-of-range out-pointers are
/// INVALID_MEMORY_ACCESS; outside a response the status is (0, empty).
pub(crate) fn failed_http_call_and_get_status() {
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .data("up", "cluster")
            .data("hdrs", callout_hdrs())
            .data("k", "x-h")
            .cb("proxy_on_tick", &http_call(0, "{up}", "{hdrs}", NONE, NONE, 100, "{o0.a}"))
            .cb(
                "proxy_on_http_call_response",
                &[
                    st(10, "(local.get 0)"),
                    st(11, "(local.get 1)"),
                    st(12, "(local.get 2)"),
                    st(13, "(local.get 3)"),
                    st(14, "(local.get 4)"),
                    st(15, "(call $proxy_get_status {o1.a} {o2})"),
                    st(16, "(call $proxy_get_header_map_value (i32.const 6) {k} {o3})"),
                    st(17, "(call $proxy_get_buffer_bytes (i32.const 4) (i32.const 0) (i32.const -1) {o3})"),
                    st(18, "(call $proxy_get_header_map_pairs (i32.const 7) {o3})"),
                    st(19, "(call $proxy_get_status {badp} {o4})"),
                    st(20, "(call $proxy_get_status {o4.a} {badp} {o4.b})"),
                    st(21, "(call $proxy_get_status {o4.a} {o4.b} {badp})"),
                ]
                .concat(),
            )
            .cb(
                "proxy_on_request_headers",
                &(st(30, "(call $proxy_get_status {o5.a} {o6})") + &st(31, "(call $mallocs)") + "(i32.const 0)"),
            );
        let mut h = H::new(&wat);
        let root = h.root();
        h.tick();
        assert_eq!(h.slot(0), 0);
        let token = h.out_word(0, 0);
        h.vm().on_http_call_response(token, None).unwrap();
        assert_eq!(h.slots(10, 12), [root, token, 0, 0, 0, 0, 1, 1, 1, 6, 6, 6], "{v}");
        assert_eq!(h.out_word(1, 0), 10, "{v}: INTERNAL_FAILURE");
        assert_eq!(h.out_str(2), "callout failed");
        h.out_untouched(3);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), true).unwrap();
        assert_eq!(h.slots(30, 2), [0, 1], "{v}: one allocation (the message) above, none here");
        assert_eq!((h.out_word(5, 0), h.out(6)), (0, (0, 0)));
    }
}

/// gRPC calls and streams: dispatch, send (streams only), cancel and close (each once),
/// PARSE_FAILURE for unknown upstreams, BAD_ARGUMENT for HTTP tokens; then metadata,
/// messages and close delivered to the root context with `proxy_get_status`.
pub(crate) fn grpc_calls_streams_and_responses() {
    let md = spairs(&[("x-md", "1")]);
    let mut bad_md = md.clone();
    bad_md.push(1);
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .data("up", "grpc_up")
            .data("other", "nope")
            .data("svc", "pkg.Svc")
            .data("m1", "Unary")
            .data("m2", "Stream")
            .data("md", &md)
            .data("badmd", &bad_md)
            .data("msg", "req")
            .data("msg2", "more")
            .data("hdrs", callout_hdrs())
            .data("kim", "im")
            .data("ktm", "tm")
            .cb(
                "proxy_on_tick",
                &[
                    st(0, "(call $proxy_grpc_call {up} {svc} {m1} {md} {msg} (i32.const 2000) {o0.a})"),
                    st(1, "(call $proxy_grpc_stream {up} {svc} {m2} {md} {o1.a})"),
                    st(2, "(call $proxy_grpc_send (i32.load {o1.a}) {msg2} (i32.const 1))"),
                    st(3, "(call $proxy_grpc_send (i32.load {o0.a}) {msg2} (i32.const 0))"),
                    st(4, "(call $proxy_grpc_send (i32.const 9999) {msg2} (i32.const 0))"),
                    st(5, &format!("(call $proxy_grpc_stream {{up}} {{svc}} {{m2}} {NONE} {{o2.a}})")),
                    st(6, "(call $proxy_grpc_cancel (i32.load {o2.a}))"),
                    st(7, "(call $proxy_grpc_cancel (i32.load {o2.a}))"),
                    st(
                        8,
                        &format!("(call $proxy_grpc_call {{up}} {{svc}} {{m1}} {NONE} {NONE} (i32.const 0) {{o3.a}})"),
                    ),
                    st(9, "(call $proxy_grpc_close (i32.load {o3.a}))"),
                    st(10, "(call $proxy_grpc_close (i32.load {o3.a}))"),
                    st(
                        11,
                        &format!(
                            "(call $proxy_grpc_call {{other}} {{svc}} {{m1}} {NONE} {{msg}} (i32.const 0) {{o4.a}})"
                        ),
                    ),
                    st(12, &format!("(call $proxy_grpc_stream {{other}} {{svc}} {{m2}} {NONE} {{o4.a}})")),
                    http_call(13, "{up}", "{hdrs}", NONE, NONE, 0, "{o5.a}"),
                    st(14, "(call $proxy_grpc_cancel (i32.load {o5.a}))"),
                    st(15, "(call $proxy_grpc_close (i32.load {o5.a}))"),
                    st(16, "(call $proxy_grpc_send (i32.load {o5.a}) {msg2} (i32.const 0))"),
                    st(17, "(call $proxy_grpc_call {up} {svc} {m1} {badmd} {msg} (i32.const 0) {o4.a})"),
                    st(18, "(call $proxy_grpc_cancel (i32.const 9999))"),
                    st(19, "(call $proxy_grpc_close (i32.const 9999))"),
                ]
                .concat(),
            )
            .cb(
                "proxy_on_grpc_receive_initial_metadata",
                &[
                    st(40, "(local.get 0)"),
                    st(41, "(local.get 1)"),
                    st(42, "(local.get 2)"),
                    st(43, "(call $proxy_get_header_map_value (i32.const 4) {kim} {o10})"),
                    st(44, "(call $proxy_get_header_map_pairs (i32.const 4) {o11})"),
                ]
                .concat(),
            )
            .cb(
                "proxy_on_grpc_receive",
                &[
                    st(50, "(local.get 0)"),
                    st(51, "(local.get 1)"),
                    st(52, "(local.get 2)"),
                    st(53, "(call $proxy_get_buffer_bytes (i32.const 5) (i32.const 0) (i32.const -1) {o12})"),
                    st(54, "(call $proxy_get_buffer_status (i32.const 5) {o13.a} {o13.b})"),
                ]
                .concat(),
            )
            .cb(
                "proxy_on_grpc_receive_trailing_metadata",
                &[
                    st(60, "(local.get 0)"),
                    st(61, "(local.get 1)"),
                    st(62, "(local.get 2)"),
                    st(63, "(call $proxy_get_header_map_value (i32.const 5) {ktm} {o14})"),
                    st(64, "(call $proxy_get_header_map_value (i32.const 4) {kim} {o15})"),
                ]
                .concat(),
            )
            .cb(
                "proxy_on_grpc_close",
                &[
                    st(70, "(local.get 0)"),
                    st(71, "(local.get 1)"),
                    st(72, "(local.get 2)"),
                    st(73, "(call $proxy_get_status {o16.a} {o17})"),
                ]
                .concat(),
            );
        let mut h = H::new(&wat);
        h.env.callouts.set_upstreams(Some(vec!["grpc_up".into()]));
        let root = h.root();
        h.tick();
        assert_eq!(h.slots(0, 20), [0, 0, 0, 2, 1, 0, 0, 1, 0, 0, 1, 4, 4, 0, 2, 2, 2, 2, 1, 1], "{v}");
        h.out_untouched(4);
        let [a, b, c, d, http] = [0, 1, 2, 3, 5].map(|k| h.out_word(k, 0));
        let tokens: std::collections::BTreeSet<u32> = [a, b, c, d, http].into();
        assert_eq!(tokens.len(), 5, "{v}: distinct tokens");
        let open = |token, stream: bool, method: &str, md: &[(&str, &str)], message: &[u8], ms| {
            CalloutEvent::GrpcOpen(GrpcCallout {
                token,
                stream,
                upstream: "grpc_up".into(),
                service: "pkg.Svc".into(),
                method: method.into(),
                initial_metadata: headers(md),
                message: message.to_vec(),
                timeout: Duration::from_millis(ms),
            })
        };
        let mut events = h.env.callouts.events();
        assert!(matches!(events.pop(), Some(CalloutEvent::Http(call)) if call.token == http), "{v}");
        assert_eq!(
            events,
            [
                open(a, false, "Unary", &[("x-md", "1")], b"req", 2000),
                open(b, true, "Stream", &[("x-md", "1")], b"", 0),
                CalloutEvent::Grpc {
                    token: b,
                    action: GrpcAction::Send { message: b"more".to_vec(), end_stream: true }
                },
                open(c, true, "Stream", &[], b"", 0),
                CalloutEvent::Grpc { token: c, action: GrpcAction::Cancel },
                open(d, false, "Unary", &[], b"", 0),
                CalloutEvent::Grpc { token: d, action: GrpcAction::Close },
            ],
            "{v}"
        );

        h.vm().on_grpc_initial_metadata(a, headers(&[("im", "1")])).unwrap();
        assert_eq!(h.slots(40, 5), [root, a, 1, 0, 0], "{v}");
        assert_eq!(h.out_str(10), "1");
        assert_eq!(h.out_bytes(11), spairs(&[("im", "1")]));
        h.vm().on_grpc_message(a, b"reply".to_vec()).unwrap();
        assert_eq!(h.slots(50, 5), [root, a, 5, 0, 0], "{v}");
        assert_eq!(h.out_str(12), "reply");
        assert_eq!((h.out_word(13, 0), h.out_word(13, 1)), (5, 1));
        h.vm().on_grpc_trailing_metadata(a, headers(&[("tm", "2")])).unwrap();
        assert_eq!(h.slots(60, 5), [root, a, 1, 0, 1], "{v}: initial metadata is gone");
        assert_eq!(h.out_str(14), "2");
        h.out_untouched(15);
        h.vm().on_grpc_close(a, 14, "unavailable").unwrap();
        assert_eq!(h.slots(70, 4), [root, a, 14, 0], "{v}");
        assert_eq!(h.out_word(16, 0), 14);
        assert_eq!(h.out_str(17), "unavailable");
        assert!(h.vm().on_grpc_message(a, Vec::new()).is_err(), "{v}: closed");
        h.vm().on_grpc_close(b, 0, "").unwrap();
        assert_eq!(h.slots(70, 4), [root, b, 0, 0], "{v}");
        assert_eq!((h.out_word(16, 0), h.out(17)), (0, (0, 0)));
        assert!(h.vm().on_grpc_close(c, 1, "").is_err(), "{v}: cancelled streams get no callbacks");
        assert!(h.vm().on_grpc_close(d, 1, "").is_err(), "{v}: closed calls get no callbacks");
    }
}
