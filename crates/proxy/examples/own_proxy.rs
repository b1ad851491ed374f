//! A Pingora `ProxyHttp` of your own that runs proxy-wasm filters with [`FilterChains`]:
//! every request goes to one upstream through one filter. The routing, clusters and
//! configuration of `wasmux serve` are not needed for that.
//!
//! ```sh
//! (cd /tmp && python3 -m http.server 9000 &)
//! cargo run -p wasmux-proxy --example own_proxy -- conformance/fixtures/wasm/headers.wasip1.wasm
//! curl -i http://127.0.0.1:8081/
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use wasmux::{PluginOptions, Runtime};
use wasmux_proxy::proxy::{apply_request, apply_response, request_map, response_map, send_reply};
use wasmux_proxy::{Chain, FilterChains, StreamFilters, Verdict};

struct MyProxy {
    chains: Arc<FilterChains>,
    chain: Chain,
}

#[async_trait]
impl ProxyHttp for MyProxy {
    type CTX = StreamFilters;

    fn new_ctx(&self) -> StreamFilters {
        StreamFilters::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut StreamFilters) -> pingora::Result<bool> {
        // The stream contexts of the chain, on this worker's VMs; then the request headers.
        *ctx = self.chains.start(&self.chain, None);
        let mut headers = request_map(session.req_header());
        let end_of_stream = session.as_downstream_mut().is_body_empty();
        match self.chains.request_headers(ctx, &mut headers, end_of_stream).await {
            // HeldForBody comes only from plugins set to `allow_on_headers_stop_iteration`;
            // `wasmux serve` then feeds them the body (`FilterChains::held_request_body`).
            Verdict::Continue | Verdict::HeldForBody => {
                apply_request(session.req_header_mut(), &headers)?;
                Ok(false)
            }
            Verdict::Reply(reply) => {
                send_reply(session, &reply).await?;
                Ok(true)
            }
            Verdict::Timeout | Verdict::Reset => {
                Err(pingora::Error::explain(pingora::ErrorType::ConnectionClosed, "closed by the filter"))
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut StreamFilters) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(("127.0.0.1", 9000), false, String::new())))
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut pingora::http::ResponseHeader,
        ctx: &mut StreamFilters,
    ) -> pingora::Result<()> {
        let mut headers = response_map(upstream_response);
        if let Verdict::Continue = self.chains.response_headers(ctx, &mut headers, false).await {
            apply_response(upstream_response, &headers)?;
        }
        Ok(())
    }

    async fn logging(&self, _session: &mut Session, _e: Option<&pingora::Error>, ctx: &mut StreamFilters) {
        // done, log and delete for every stream context of the request.
        self.chains.finish(ctx);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: own_proxy FILTER.wasm")?;
    let compiled = Runtime::default().load(&std::fs::read(path)?, PluginOptions::default())?;
    let chains = FilterChains::new(vec![vec![compiled]])?;
    let chain = chains.chain(&[""])?;
    // Each worker thread keeps its own VM instances: tasks must not move between threads.
    let conf = ServerConf { threads: 2, work_stealing: false, ..ServerConf::default() };
    let mut server = pingora::server::Server::new_with_opt_and_conf(None::<Opt>, conf);
    let mut service = pingora::proxy::http_proxy_service(&server.configuration.clone(), MyProxy { chains, chain });
    service.add_tcp("127.0.0.1:8081");
    server.add_service(service);
    server.bootstrap();
    server.run_forever()
}
