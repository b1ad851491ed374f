//! An example filter that tests itself: `tests/filter.yaml` holds its tests and
//! `tests/self_test.rs` builds it for `wasm32-wasip1` and runs them with `wasmux::testing` on
//! every engine compiled in.
//!
//! What it does, configured by a JSON-free plugin configuration (`header=NAME`, default
//! `x-example`):
//! - a request to a path under `/admin` without an `authorization` header gets a local 401 reply
//!   (body `unauthorized\n`, header `www-authenticate: Basic`);
//! - every other request gets the header `NAME: wasmux` and passes;
//! - the response loses its `server` header;
//! - the counter `example_requests_total` counts requests, and each path is logged at info.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(ExampleRoot { header: "x-example".into(), requests: 0 })
    });
}}

struct ExampleRoot {
    header: String,
    requests: u32,
}

impl Context for ExampleRoot {}

impl RootContext for ExampleRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let config = String::from_utf8_lossy(&config);
        match config.trim() {
            "" => {}
            c => match c.strip_prefix("header=") {
                Some(name) if !name.is_empty() => self.header = name.to_ascii_lowercase(),
                _ => {
                    proxy_wasm::hostcalls::log(LogLevel::Error, &format!("bad configuration `{c}`")).ok();
                    return false;
                }
            },
        }
        match proxy_wasm::hostcalls::define_metric(MetricType::Counter, "example_requests_total") {
            Ok(id) => self.requests = id,
            Err(_) => return false,
        }
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ExampleFilter { header: self.header.clone(), requests: self.requests }))
    }
}

struct ExampleFilter {
    header: String,
    requests: u32,
}

impl Context for ExampleFilter {}

impl HttpContext for ExampleFilter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        proxy_wasm::hostcalls::increment_metric(self.requests, 1).ok();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        proxy_wasm::hostcalls::log(LogLevel::Info, &format!("path {path}")).ok();
        if (path == "/admin" || path.starts_with("/admin/")) && self.get_http_request_header("authorization").is_none()
        {
            self.send_http_response(401, vec![("www-authenticate", "Basic")], Some(b"unauthorized\n"));
            return Action::Pause;
        }
        self.set_http_request_header(&self.header, Some("wasmux"));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("server", None);
        Action::Continue
    }
}
