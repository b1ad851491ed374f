//! The request, response and filter of the glue bench and the glue loop example: what wrk
//! sends, what nginx answers, and the load benchmark's headers fixture.

use pingora::http::{RequestHeader, ResponseHeader};

/// The headers fixture (the load benchmark's filter).
pub(crate) const HEADERS: &[u8] = include_bytes!("../../../../conformance/fixtures/wasm/headers.wasip1.wasm");

/// The request wrk sends.
pub(crate) fn request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/", None).expect("request");
    req.append_header("host", "127.0.0.1:18081").expect("host");
    req
}

/// nginx's answer to it.
pub(crate) fn response() -> ResponseHeader {
    let mut resp = ResponseHeader::build(200, None).expect("response");
    for (k, v) in [
        ("server", "nginx/1.22.1"),
        ("date", "Fri, 04 Dec 2026 14:31:06 GMT"),
        ("content-type", "text/plain"),
        ("content-length", "2"),
        ("connection", "keep-alive"),
    ] {
        resp.append_header(k, v).expect("header");
    }
    resp
}
