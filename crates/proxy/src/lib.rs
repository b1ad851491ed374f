//! proxy-wasm HTTP filter chains inside a Pingora reverse proxy: the data plane behind
//! `wasmux serve`.
//!
//! - [`config`]: the YAML configuration (listeners, routes, clusters, plugins), checked before
//!   anything starts, every error with its line.
//! - [`FilterChains`]: the plugins, compiled once and grouped into VMs (plugins with the same
//!   `vm_id`, engine, code and VM configuration share one VM, a root context each, as in
//!   Envoy), with one instance of every VM per worker thread. A Pingora user can drive the same
//!   chains from their own `ProxyHttp`: [`FilterChains::start`] in the request phase, then
//!   [`FilterChains::request_headers`], [`FilterChains::request_body`],
//!   [`FilterChains::response_headers`], [`FilterChains::response_body`], and
//!   [`FilterChains::finish`] in `logging`.
//!   `examples/own_proxy.rs` is a complete `ProxyHttp` of that kind, on Pingora's own server.
//! - [`WasmProxy`]: that `ProxyHttp`, with routes and clusters; [`server::run`] and
//!   [`server::start`] build Pingora services from a configuration.
//!
//! # Threads and tasks
//!
//! Pingora runs a service on `workers` threads. wasmux sets `work_stealing: false`: each thread
//! then runs its own single-threaded runtime, and a connection's task never moves to another
//! thread. Each worker thread holds its own instance of every VM (in a thread-local, created on
//! the first request the thread serves), so all callbacks of a stream run on the VM that
//! created its context, and the request path takes no process-wide lock. Pingora's per-request
//! context holds only ids and flags ([`StreamFilters`]), which is what keeps it `Send + Sync`
//! as Pingora requires. A `ProxyHttp` that uses [`FilterChains`] must run with
//! `work_stealing: false` too.
//!
//! # What a filter sees
//!
//! Request headers go through the chain in order, responses in reverse; header edits reach the
//! upstream and the client. A filter that pauses the headers holds the request (its body is
//! not read) until it resumes the stream or sends a local reply, or the route's timeout answers
//! 504; this is Envoy's default (`allow_on_headers_stop_iteration: false`). Bodies are handed
//! over chunk by chunk; a filter that pauses a body chunk buffers it (up to the plugin's
//! `max_body_bytes` quota: past it 413 for requests, 500 for responses, as Envoy). Pingora
//! cannot wait inside a response body: a response body a filter still holds at its end is
//! released (counted). When the request ends, for any reason, every stream context gets
//! `proxy_on_done`, `proxy_on_log` and `proxy_on_delete`.
//!
//! What reaches a VM from outside a request arrives through its worker's inbox ([`callout`]):
//! HTTP callout responses (callouts run as tasks on the worker that dispatched them) and
//! shared-queue notifications from other workers; the worker's background task also fires the
//! root contexts' ticks. After each, the streams the filter may have resumed look again.

pub mod callout;
pub mod chain;
pub mod config;
pub mod proxy;
pub mod server;

pub use chain::{Chain, FilterChains, PluginCounters, StreamFilters, Verdict};
pub use config::{Config, ConfigError};
pub use proxy::{RequestCtx, WasmProxy};
pub use server::{ServeError, ServeHandle, build, run, start};
