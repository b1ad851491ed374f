//! Stream control (`proxy_continue_stream`, `proxy_close_stream`, 0.1.0's
//! `proxy_continue_request` / `proxy_continue_response` / `proxy_clear_route_cache`) and
//! `proxy_send_local_response`.

use wasmux::abi::{LocalReply, StreamControl, StreamType};
use wasmux::{AbiVersion, Action, HeaderMap};

use crate::harness::{H, Wat, entries, headers, owned, spairs, st};

/// Continue releases the paused direction's buffered bytes and is recorded with close in
/// `control`; unknown or wrong-kind stream types are BAD_ARGUMENT; a root context has no
/// stream (NOT_FOUND).
pub(crate) fn continue_and_close_stream_0_2_x() {
    for v in [AbiVersion::V0_2_0, AbiVersion::V0_2_1] {
        let wat = Wat::new(v)
            .cb("proxy_on_request_body", "(i32.const 1)")
            .cb(
                "proxy_on_response_headers",
                &[
                    st(0, "(call $proxy_continue_stream (i32.const 0))"),
                    st(1, "(call $proxy_continue_stream (i32.const 4))"),
                    st(2, "(call $proxy_continue_stream (i32.const 2))"),
                    st(3, "(call $proxy_close_stream (i32.const 1))"),
                    st(4, "(call $proxy_close_stream (i32.const 3))"),
                    st(5, "(call $proxy_close_stream (i32.const -1))"),
                    st(10, "(local.get 0)"),
                    "(i32.const 0)".into(),
                ]
                .concat(),
            )
            .cb("proxy_on_response_body", "(i32.const 1)")
            .cb(
                "proxy_on_tick",
                &[
                    st(20, "(call $proxy_continue_stream (i32.const 0))"),
                    st(21, "(call $proxy_close_stream (i32.const 1))"),
                    "(drop (call $proxy_set_effective_context (call $ld (i32.const 10))))".into(),
                    st(22, "(call $proxy_continue_stream (i32.const 1))"),
                ]
                .concat(),
            )
            .cb("proxy_on_downstream_data", "(i32.const 1)")
            .cb(
                "proxy_on_upstream_data",
                &[
                    st(30, "(call $proxy_continue_stream (i32.const 2))"),
                    st(31, "(call $proxy_close_stream (i32.const 3))"),
                    st(32, "(call $proxy_continue_stream (i32.const 0))"),
                    st(33, "(call $proxy_close_stream (i32.const 1))"),
                    "(i32.const 0)".into(),
                ]
                .concat(),
            );
        let mut h = H::new(&wat);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[(":method", "POST")]), false).unwrap();
        assert_eq!(h.plugin.request_body(id, b"abc", false).unwrap(), Action::Pause);
        assert_eq!(h.http(id).request_body.buffered, b"abc");
        assert_eq!(h.plugin.response_headers(id, headers(&[(":status", "200")]), false).unwrap(), Action::Continue);
        assert_eq!(h.slots(0, 6), [0, 2, 2, 0, 2, 2], "{v}");
        let s = h.http(id);
        assert_eq!((s.request_body.sent.as_slice(), s.request_body.buffered.as_slice()), (&b"abc"[..], &b""[..]));
        assert_eq!(
            s.control,
            [StreamControl::Continue(StreamType::HttpRequest), StreamControl::Close(StreamType::HttpResponse)]
        );

        assert_eq!(h.plugin.response_body(id, b"xyz", true).unwrap(), Action::Pause);
        h.tick();
        assert_eq!(h.slots(20, 3), [1, 1, 0], "{v}");
        let s = h.http(id);
        assert_eq!(s.response_body.sent, b"xyz", "{v}: resumed from the root via the effective context");
        assert_eq!(s.control.last(), Some(&StreamControl::Continue(StreamType::HttpResponse)));
        assert_eq!(s.control.len(), 3);

        let (tcp, _) = h.plugin.tcp_stream().unwrap();
        assert_eq!(h.plugin.downstream_data(tcp, b"d1", false).unwrap(), Action::Pause);
        assert_eq!(h.plugin.upstream_data(tcp, b"u1", false).unwrap(), Action::Continue);
        assert_eq!(h.slots(30, 4), [0, 0, 2, 2], "{v}");
        let t = h.tcp(tcp);
        assert_eq!((t.downstream.sent.as_slice(), t.upstream.sent.as_slice()), (&b"d1"[..], &b"u1"[..]));
        assert_eq!(
            t.control,
            [StreamControl::Continue(StreamType::Downstream), StreamControl::Close(StreamType::Upstream)]
        );
    }
}

/// 0.1.0's argument-less stream control: continue request / response release the bodies,
/// clear_route_cache is recorded; root contexts are NOT_FOUND and TCP streams BAD_ARGUMENT.
pub(crate) fn continue_request_response_and_route_cache_0_1_0() {
    let wat = Wat::new(AbiVersion::V0_1_0)
        .cb("proxy_on_request_body", "(i32.const 1)")
        .cb("proxy_on_response_headers", &(st(0, "(call $proxy_continue_request)") + "(i32.const 0)"))
        .cb("proxy_on_response_body", "(i32.const 1)")
        .cb(
            "proxy_on_response_trailers",
            &(st(1, "(call $proxy_continue_response)") + &st(2, "(call $proxy_clear_route_cache)") + "(i32.const 0)"),
        )
        .cb(
            "proxy_on_tick",
            &[
                st(20, "(call $proxy_continue_request)"),
                st(21, "(call $proxy_continue_response)"),
                st(22, "(call $proxy_clear_route_cache)"),
            ]
            .concat(),
        )
        .cb(
            "proxy_on_downstream_data",
            &(st(30, "(call $proxy_continue_request)") + &st(31, "(call $proxy_clear_route_cache)") + "(i32.const 0)"),
        );
    let mut h = H::new(&wat);
    let id = h.stream();
    h.plugin.request_headers(id, headers(&[]), false).unwrap();
    assert_eq!(h.plugin.request_body(id, b"abc", true).unwrap(), Action::Pause);
    h.plugin.response_headers(id, headers(&[]), false).unwrap();
    assert_eq!(h.slot(0), 0);
    assert_eq!(h.http(id).request_body.sent, b"abc");
    assert_eq!(h.plugin.response_body(id, b"xyz", false).unwrap(), Action::Pause);
    assert!(h.http(id).response_body.sent.is_empty());
    h.plugin.response_trailers(id, headers(&[])).unwrap();
    assert_eq!(h.slots(1, 2), [0, 0]);
    let s = h.http(id);
    assert_eq!(s.response_body.sent, b"xyz");
    assert_eq!(
        s.control,
        [
            StreamControl::Continue(StreamType::HttpRequest),
            StreamControl::Continue(StreamType::HttpResponse),
            StreamControl::ClearRouteCache,
        ]
    );
    h.tick();
    assert_eq!(h.slots(20, 3), [1, 1, 1]);
    let (tcp, _) = h.plugin.tcp_stream().unwrap();
    h.plugin.downstream_data(tcp, b"d", false).unwrap();
    assert_eq!(h.slots(30, 2), [2, 2]);
    assert!(h.tcp(tcp).control.is_empty());
}

fn reply(code: u32, details: &str, body: &[u8], hdrs: &[(&str, &str)], grpc: Option<i32>) -> LocalReply {
    LocalReply {
        status_code: code,
        details: details.into(),
        body: body.to_vec(),
        headers: HeaderMap::from_pairs(hdrs.iter().copied()),
        grpc_status: grpc,
    }
}

/// `proxy_send_local_response`: the reply is recorded with its headers in the pairs format;
/// `grpc_status` -1 means a plain HTTP reply; the reply forces the callback's result to Pause
/// (a paused body stays buffered); malformed headers are BAD_ARGUMENT with no reply; a root
/// context has no stream to answer (NOT_FOUND).
pub(crate) fn send_local_response_records_the_reply() {
    let hdrs = spairs(&[("X-R", "1"), ("x-s", "2")]);
    let mut bad = hdrs.clone();
    bad.push(0);
    for v in AbiVersion::ALL {
        let slr = |slot: u32, code: u32, det: &str, body: &str, hdrs: &str, grpc: i32| {
            st(
                slot,
                &format!("(call $proxy_send_local_response (i32.const {code}) {det} {body} {hdrs} (i32.const {grpc}))"),
            )
        };
        let none = "(i32.const 0) (i32.const 0)";
        let wat = Wat::new(v)
            .data("det", "denied")
            .data("body", "nope")
            .data("hdrs", &hdrs)
            .data("badhdrs", &bad)
            .data("gdet", "grpc-denied")
            .data("gmsg", "permission")
            .data("empty4", [0u8; 4])
            .cb("proxy_on_request_headers", &(slr(0, 403, "{det}", "{body}", "{hdrs}", -1) + "(i32.const 0)"))
            .cb("proxy_on_response_headers", &(slr(1, 200, "{gdet}", "{gmsg}", none, 16) + "(i32.const 0)"))
            .cb("proxy_on_request_trailers", &(slr(2, 500, "{det}", "{body}", "{badhdrs}", -1) + "(i32.const 0)"))
            .cb("proxy_on_request_body", &(slr(3, 413, none, none, "{empty4}", -1) + "(i32.const 0)"))
            .cb("proxy_on_tick", &slr(4, 403, "{det}", "{body}", "{hdrs}", -1))
            .cb("proxy_on_response_trailers", &(slr(5, 200, none, none, none, 0) + "(i32.const 0)"));
        let mut h = H::new(&wat);

        let s1 = h.stream();
        let a = h.plugin.request_headers(s1, headers(&[(":path", "/")]), true).unwrap();
        assert_eq!((h.slot(0), a), (0, Action::Pause), "{v}: a local reply forces Pause");
        let got = h.http(s1).local_reply.expect("reply");
        assert_eq!(got, reply(403, "denied", b"nope", &[("x-r", "1"), ("x-s", "2")], None), "{v}");
        assert_eq!(entries(&got.headers), owned(&[("x-r", "1"), ("x-s", "2")]));

        let s2 = h.stream();
        let a = h.plugin.response_headers(s2, headers(&[(":status", "200")]), false).unwrap();
        assert_eq!((h.slot(1), a), (0, Action::Pause));
        assert_eq!(h.http(s2).local_reply, Some(reply(200, "grpc-denied", b"permission", &[], Some(16))), "{v}");

        let s3 = h.stream();
        let a = h.plugin.request_trailers(s3, headers(&[("t", "1")])).unwrap();
        assert_eq!((h.slot(2), a), (2, Action::Continue), "{v}: malformed headers");
        assert_eq!(h.http(s3).local_reply, None);

        let s4 = h.stream();
        h.plugin.request_headers(s4, headers(&[]), false).unwrap();
        let a = h.plugin.request_body(s4, b"payload", false).unwrap();
        assert_eq!((h.slot(3), a), (0, Action::Pause));
        let s = h.http(s4);
        assert_eq!(s.local_reply, Some(reply(413, "", b"", &[], None)), "{v}");
        assert_eq!(s.request_body.buffered, b"payload", "{v}: not released");

        h.tick();
        assert_eq!(h.slot(4), 1, "{v}: no stream in a root context");

        let s5 = h.stream();
        let a = h.plugin.response_trailers(s5, headers(&[])).unwrap();
        assert_eq!((h.slot(5), a), (0, Action::Pause));
        assert_eq!(h.http(s5).local_reply.and_then(|r| r.grpc_status), Some(0), "{v}: gRPC OK is a status");
    }
}

/// A finished stream leaves nothing behind for the next one (stream states are reused): the
/// next stream starts with empty maps and bodies, no control entries and no local reply.
pub(crate) fn finished_streams_leave_nothing_behind() {
    let wat = Wat::new(AbiVersion::V0_2_1).cb("proxy_on_request_body", "(i32.const 1)").cb(
        "proxy_on_response_headers",
        &[st(0, "(call $proxy_close_stream (i32.const 1))"), "(i32.const 0)".into()].concat(),
    );
    let mut h = H::new(&wat);
    for _ in 0..3 {
        let id = h.stream();
        assert_eq!(h.http(id), wasmux::abi::HttpStreamState::default(), "stream {id} starts clean");
        h.plugin.request_headers(id, headers(&[(":method", "POST"), ("x-a", "1")]), false).unwrap();
        assert_eq!(h.plugin.request_body(id, b"abc", false).unwrap(), Action::Pause);
        h.plugin.response_headers(id, headers(&[(":status", "200")]), false).unwrap();
        let state = h.http(id);
        assert_eq!(state.request_body.buffered, b"abc");
        assert_eq!(state.control, [StreamControl::Close(StreamType::HttpResponse)]);
        assert!(h.plugin.finish(id).unwrap());
        assert!(h.vm().http(id).is_err(), "stream {id} is gone");
    }
}
