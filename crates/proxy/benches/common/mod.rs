//! One request as the glue bench and the glue loop example drive it: what wrk sends, what
//! nginx answers, the load benchmark's headers fixture, and the three ways through (header
//! conversions alone, the filter chain as `wasmux serve` runs it, the same callbacks straight
//! on a VM).

use std::sync::Arc;
use std::time::Duration;

use pingora::http::{RequestHeader, ResponseHeader};
use wasmux::{Plugin, PluginOptions, Runtime};
use wasmux_proxy::proxy::{apply_request, apply_response, request_map, response_map};
use wasmux_proxy::{Chain, FilterChains, Verdict};

/// The headers fixture (the load benchmark's filter).
const HEADERS: &[u8] = include_bytes!("../../../../conformance/fixtures/wasm/headers.wasip1.wasm");

/// The request wrk sends.
fn request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/", None).expect("request");
    req.append_header("host", "127.0.0.1:18081").expect("host");
    req
}

/// nginx's answer to it.
fn response() -> ResponseHeader {
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

/// The headers fixture loaded once, as a one-filter chain and as a VM of its own.
pub(crate) struct Glue {
    rt: tokio::runtime::Runtime,
    chains: Arc<FilterChains>,
    chain: Chain,
    vm: Plugin,
    req: RequestHeader,
    resp: ResponseHeader,
}

impl Glue {
    pub(crate) fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let options = PluginOptions { name: "headers".into(), ..PluginOptions::default() };
        let compiled = Runtime::default().load(HEADERS, options).expect("the headers fixture loads");
        let chains = FilterChains::new(vec![vec![compiled.clone()]]).expect("chains");
        let chain = chains.chain(&["headers"]).expect("chain");
        let vm = compiled.instantiate().expect("instance");
        Self { rt, chains, chain, vm, req: request(), resp: response() }
    }

    /// Fresh copies of the request and the response (Pingora's headers are edited in place).
    pub(crate) fn fresh(&self) -> (RequestHeader, ResponseHeader) {
        (self.req.clone(), self.resp.clone())
    }

    /// The header conversions alone: to the filters' maps and back, nothing edited.
    pub(crate) fn maps(r: &mut RequestHeader, s: &mut ResponseHeader) {
        let m = request_map(r);
        apply_request(r, &m).expect("apply");
        let m = response_map(s);
        apply_response(s, &m).expect("apply");
    }

    /// The request and its response through the chain, as `wasmux serve` drives them; returns
    /// the response body the filter let through.
    pub(crate) fn through_chain(&self, r: &mut RequestHeader, s: &mut ResponseHeader) -> Vec<u8> {
        let Self { rt, chains, chain, .. } = self;
        rt.block_on(async {
            let mut m = request_map(r);
            let mut state = chains.start(chain, Some(Duration::from_secs(15)));
            assert!(matches!(chains.request_headers(&mut state, &mut m, true).await, Verdict::Continue));
            apply_request(r, &m).expect("apply");
            let mut m = response_map(s);
            assert!(matches!(chains.response_headers(&mut state, &mut m, false).await, Verdict::Continue));
            apply_response(s, &m).expect("apply");
            let (body, verdict) = chains.response_body(&mut state, b"ok", true);
            assert!(matches!(verdict, Verdict::Continue));
            chains.finish(&mut state);
            body
        })
    }

    /// The same callbacks straight on the VM, with no proxy around them.
    pub(crate) fn vm_only(&mut self) {
        let Self { vm, req, resp, .. } = self;
        let id = vm.http_stream().expect("stream");
        vm.request_headers(id, request_map(req), true).expect("request headers");
        vm.response_headers(id, response_map(resp), false).expect("response headers");
        vm.response_body(id, b"ok", true).expect("response body");
        vm.finish(id).expect("finish");
    }
}
