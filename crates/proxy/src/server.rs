//! Building and running `wasmux serve` from a [`Config`]: plugins compiled once and grouped
//! into VMs, one Pingora service per listener, the admin listener.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::listeners::TcpSocketOptions;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::services::Service as ServiceTrait;
use pingora::services::listening::Service;
use wasmux::abi::services::{InMemoryMetrics, Metrics, TracingLog};

use crate::callout::{ClusterCallouts, NotifyingQueues};
use wasmux::{CompiledPlugin, PluginOptions, RootOptions, Runtime, Services};

use crate::chain::FilterChains;
use crate::config::{Config, addr, config_bytes};
use crate::proxy::{Cluster, HostMatch, Route, WasmProxy};

/// Why the server does not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A plugin does not load or start.
    #[error("plugin `{plugin}`: {message}")]
    Plugin {
        /// Its name.
        plugin: String,
        /// What went wrong.
        message: String,
    },
    /// Pingora could not be set up.
    #[error("server: {0}")]
    Server(String),
}

/// Everything a configuration builds, ready to serve.
#[derive(Debug)]
pub struct Built {
    /// The plugins and their per-worker VMs.
    pub chains: Arc<FilterChains>,
    /// The filters' metrics.
    pub metrics: Arc<InMemoryMetrics>,
    /// One proxy per listener: name, address, proxy.
    pub listeners: Vec<(String, String, WasmProxy)>,
}

/// Compiles every plugin (once), checks that each VM starts, and builds the routes.
///
/// # Errors
/// A module that cannot be read, compiled or started, named by its plugin.
pub fn build(config: &Config, base: &Path) -> Result<Built, ServeError> {
    let metrics = Arc::new(InMemoryMetrics::default());
    let uid = FilterChains::next_uid();
    let clusters: Arc<Vec<Cluster>> = Arc::new(
        config
            .clusters
            .iter()
            .map(|c| {
                Cluster::new(
                    c.name.as_str().to_string(),
                    c.endpoints.iter().filter_map(|e| addr(e)).collect(),
                    Duration::from_millis(c.connect_timeout_ms.unwrap_or(5000)),
                )
            })
            .collect(),
    );
    // One queue registry whose owners are woken on their own worker.
    let services =
        Services { metrics: metrics.clone(), queues: Arc::new(NotifyingQueues::new(uid)), ..Services::default() };

    // VM key: (vm_id, runtime, code, VM configuration, environment), as Envoy keys VMs.
    type Key = (String, String, String, Vec<u8>, Vec<(String, String)>);
    let mut keys: Vec<Key> = Vec::new();
    let mut groups: Vec<Vec<Arc<CompiledPlugin>>> = Vec::new();
    // Filter lines go to `tracing`: every VM gets the level its subscriber takes for them.
    let log_level = TracingLog::level();
    for p in &config.plugins {
        let name = p.name.as_str().to_string();
        let err = |message: String| ServeError::Plugin { plugin: name.clone(), message };
        let runtime = p.vm.runtime.as_ref().map_or("wasmtime", |r| r.as_str());
        let vm_config = config_bytes(p.vm.configuration.as_ref());
        let env: Vec<(String, String)> = p.vm.environment.clone().into_iter().collect();
        let key =
            (p.vm.vm_id.clone(), runtime.to_string(), p.vm.code.as_str().to_string(), vm_config.clone(), env.clone());
        let root = RootOptions {
            name: name.clone(),
            root_id: p.root_id.clone(),
            plugin_configuration: config_bytes(p.configuration.as_ref()),
            failure_policy: Config::policy(p),
        };
        if let Some(g) = keys.iter().position(|k| *k == key) {
            let sibling = groups[g][0].sibling(root);
            groups[g].push(sibling);
            continue;
        }
        let rt: Runtime = runtime.parse().map_err(|e| err(format!("{e}")))?;
        let path = base.join(p.vm.code.as_str());
        let bytes = std::fs::read(&path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        let options = PluginOptions {
            name: root.name,
            root_id: root.root_id,
            vm_id: p.vm.vm_id.clone(),
            vm_configuration: vm_config,
            plugin_configuration: root.plugin_configuration,
            environment: env,
            log_level,
            limits: p.limits.to_limits(),
            failure_policy: root.failure_policy,
            services: services.clone(),
            max_callout_timeout: p
                .limits
                .max_callout_timeout_ms
                .map_or(wasmux::abi::VmEnv::DEFAULT_MAX_CALLOUT_TIMEOUT, Duration::from_millis),
            snapshot: p.vm.snapshot,
        };
        // Each VM's callouts know which VM they answer to.
        let callouts = ClusterCallouts::new(
            uid,
            groups.len(),
            clusters.clone(),
            options.max_callout_timeout,
            options.limits.quotas.max_body_bytes,
        );
        let options =
            PluginOptions { services: Services { callouts: Arc::new(callouts), ..options.services }, ..options };
        let compiled = rt.load(&bytes, options).map_err(|e| err(e.to_string()))?;
        keys.push(key);
        groups.push(vec![compiled]);
    }
    let chains =
        FilterChains::with_uid(uid, groups).map_err(|e| ServeError::Plugin { plugin: e.plugin, message: e.message })?;
    for p in config.plugins.iter().filter(|p| p.allow_on_headers_stop_iteration) {
        chains.set_allow_on_headers_stop_iteration(p.name.as_str(), true);
    }

    let cluster_index = |name: &str| clusters.iter().position(|c| c.name == name).unwrap_or(0);
    let mut listeners = Vec::new();
    for l in &config.listeners {
        let mut routes = Vec::new();
        for r in &l.routes {
            let names: Vec<&str> = r.filters.iter().map(|f| f.as_str()).collect();
            routes.push(Route {
                host: HostMatch::parse(r.matcher.host.as_ref().map(|h| h.as_str())),
                prefix: r.matcher.prefix.as_ref().map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
                cluster: cluster_index(&r.cluster),
                chain: chains.chain(&names).map_err(ServeError::Server)?,
                timeout: match r.timeout_ms.unwrap_or(15_000) {
                    0 => None,
                    ms => Some(Duration::from_millis(ms)),
                },
            });
        }
        let proxy = WasmProxy::new(chains.clone(), clusters.clone(), routes);
        listeners.push((l.name.as_str().to_string(), l.address.as_str().to_string(), proxy));
    }
    Ok(Built { chains, metrics, listeners })
}

/// A per-plugin counter series: name, help, how to read it.
type Series = (&'static str, &'static str, fn(&crate::chain::PluginCounters) -> u64);

/// The admin endpoint: `/ready` and `/metrics` (Prometheus text).
#[derive(Debug)]
pub struct AdminApp {
    chains: Arc<FilterChains>,
    metrics: Arc<InMemoryMetrics>,
}

/// A metric name Prometheus accepts: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn prom_name(name: &str) -> String {
    let mut out: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl AdminApp {
    /// The `/metrics` text.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        let plugins = self.chains.plugins();
        let series: [Series; 6] = [
            ("wasmux_plugin_streams_total", "HTTP streams created", |c| c.streams.load(Ordering::Relaxed)),
            ("wasmux_plugin_traps_total", "callbacks that trapped or hit a limit", |c| c.traps.load(Ordering::Relaxed)),
            ("wasmux_plugin_failed_streams_total", "streams answered or skipped by the failure policy", |c| {
                c.failed_streams.load(Ordering::Relaxed)
            }),
            ("wasmux_plugin_local_replies_total", "local replies", |c| c.local_replies.load(Ordering::Relaxed)),
            ("wasmux_plugin_reloads_total", "VM reloads", |c| c.reloads.load(Ordering::Relaxed)),
            ("wasmux_plugin_released_paused_bodies_total", "response bodies still held at their end", |c| {
                c.released_paused_bodies.load(Ordering::Relaxed)
            }),
        ];
        for (name, help, get) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for p in plugins {
                let _ = writeln!(out, "{name}{{plugin=\"{}\"}} {}", label(&p.name), get(&p.counters));
            }
        }
        let _ = writeln!(
            out,
            "# HELP wasmux_plugin_snapshot 1 when the plugin's VM starts each worker's instance from a snapshot\n# TYPE wasmux_plugin_snapshot gauge"
        );
        for p in plugins {
            let taken = u8::from(self.chains.starts_from_snapshot(p));
            let _ = writeln!(out, "wasmux_plugin_snapshot{{plugin=\"{}\"}} {taken}", label(&p.name));
        }
        let _ = writeln!(
            out,
            "# HELP wasmux_live_stream_contexts stream contexts not yet deleted, over every worker\n# TYPE wasmux_live_stream_contexts gauge\nwasmux_live_stream_contexts {}",
            self.chains.live_streams()
        );
        for m in self.metrics.snapshot() {
            let name = prom_name(&m.name);
            match &m.histogram {
                None => {
                    let kind = if m.kind.as_str() == "counter" { "counter" } else { "gauge" };
                    let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {}", m.value);
                }
                Some(h) => {
                    let _ = writeln!(out, "# TYPE {name} histogram");
                    let mut cumulative = 0;
                    for (le, n) in h.buckets() {
                        cumulative += n;
                        let le = le.map_or_else(|| "+Inf".to_string(), |b| b.to_string());
                        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
                    }
                    if h.buckets().all(|(le, _)| le.is_some()) {
                        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", m.value);
                    }
                    let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", h.sum, m.value);
                }
            }
        }
        out
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let (status, body) = match session.req_header().uri.path() {
            // The admin listener starts with the proxy's listeners, after every plugin has been
            // compiled and started once: serving it means the proxy is ready.
            "/ready" => (200, b"LIVE\n".to_vec()),
            "/metrics" => (200, self.metrics_text().into_bytes()),
            _ => (404, b"not found\n".to_vec()),
        };
        let mut resp = http::Response::new(body);
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
        let len = resp.body().len();
        resp.headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
        resp.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        resp
    }
}

/// A server running on its own threads; dropping it stops it too.
#[derive(Debug)]
pub struct ServeHandle {
    shutdown: tokio::sync::watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// The plugins and their per-worker VMs (for counters).
    pub chains: Arc<FilterChains>,
}

impl ServeHandle {
    /// Stops accepting, lets requests in flight finish (up to the drain time), and waits for
    /// the worker threads.
    pub fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        let _ = self.shutdown.send(true);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        self.join();
    }
}

/// Refuses to start when an address cannot be listened on (in use, not local), before any
/// worker starts: Pingora would only find out inside a worker.
fn check_listen(config: &Config) -> Result<(), ServeError> {
    let admin = config.admin.iter().map(|a| ("admin", a.address.as_str()));
    for (name, address) in config.listeners.iter().map(|l| (l.name.as_str(), l.address.as_str())).chain(admin) {
        let probe = std::net::TcpListener::bind(address)
            .map_err(|e| ServeError::Server(format!("listener `{name}` cannot listen on {address}: {e}")))?;
        drop(probe);
    }
    Ok(())
}

type Watch = tokio::sync::watch::Receiver<bool>;

/// One worker thread: a single-threaded runtime serving every listener on its own sockets
/// (`SO_REUSEPORT`: the kernel spreads connections over the workers), and the admin listener
/// on worker 0. Returns when `shutdown` turns true and the requests in flight have ended (or
/// the drain time has passed).
fn worker(index: usize, built: &Built, admin: Option<(String, AdminApp)>, shutdown: Watch, drain: Duration) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(target: "wasmux::proxy", "worker {index}: cannot start a runtime: {e}");
            return;
        }
    };
    rt.block_on(async {
        let conf = Arc::new(ServerConf::default());
        let mut tasks = Vec::new();
        for (name, address, proxy) in &built.listeners {
            let mut svc = pingora::proxy::http_proxy_service_with_name(&conf, proxy.clone(), name);
            let mut options = TcpSocketOptions::default();
            options.so_reuseport = Some(true);
            svc.add_tcp_with_settings(address, options);
            let watch = shutdown.clone();
            tasks.push(tokio::spawn(async move { ServiceTrait::start_service(&mut svc, None, watch, 1).await }));
        }
        if let Some((address, app)) = admin {
            let mut svc = Service::new("admin".to_string(), app);
            svc.add_tcp(&address);
            let watch = shutdown.clone();
            tasks.push(tokio::spawn(async move { ServiceTrait::start_service(&mut svc, None, watch, 1).await }));
        }
        for t in tasks {
            if let Err(e) = t.await {
                tracing::error!(target: "wasmux::proxy", "worker {index}: a listener failed: {e}");
            }
        }
        // Draining: requests in flight run on this runtime until they end or time is up.
        let deadline = tokio::time::Instant::now() + drain;
        while built.chains.worker_live_streams() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        built.chains.release_worker();
    });
}

fn spawn_workers(
    config: &Config,
    built: &Arc<Built>,
    shutdown: &Watch,
) -> Result<Vec<std::thread::JoinHandle<()>>, ServeError> {
    let mut workers = Vec::new();
    for index in 0..config.workers() {
        let built = built.clone();
        let watch = shutdown.clone();
        let drain = config.drain();
        let admin = config.admin.as_ref().filter(|_| index == 0).map(|a| {
            let app = AdminApp { chains: built.chains.clone(), metrics: built.metrics.clone() };
            (a.address.as_str().to_string(), app)
        });
        let handle = std::thread::Builder::new()
            .name(format!("wasmux-worker-{index}"))
            .spawn(move || worker(index, &built, admin, watch, drain))
            .map_err(|e| ServeError::Server(format!("cannot start worker {index}: {e}")))?;
        workers.push(handle);
    }
    Ok(workers)
}

/// Builds and runs a server until SIGINT or SIGTERM, then stops accepting and lets requests in
/// flight finish for up to the configuration's `drain_seconds`.
///
/// # Errors
/// As [`build`]; an address that cannot be listened on.
pub fn run(config: &Config, base: &Path) -> Result<(), ServeError> {
    let handle = start(config, base)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ServeError::Server(format!("cannot start the signal runtime: {e}")))?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|e| ServeError::Server(e.to_string()))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| ServeError::Server(e.to_string()))?;
        tokio::select! {
            _ = term.recv() => tracing::info!(target: "wasmux::proxy", "SIGTERM: draining"),
            _ = int.recv() => tracing::info!(target: "wasmux::proxy", "SIGINT: draining"),
        }
        Ok::<(), ServeError>(())
    })?;
    handle.stop();
    Ok(())
}

/// Builds a server and runs it on its own worker threads until [`ServeHandle::stop`].
///
/// # Errors
/// As [`build`]; an address that cannot be listened on.
pub fn start(config: &Config, base: &Path) -> Result<ServeHandle, ServeError> {
    let built = Arc::new(build(config, base)?);
    check_listen(config)?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let chains = built.chains.clone();
    let workers = spawn_workers(config, &built, &rx)?;
    tracing::info!(target: "wasmux::proxy", workers = workers.len(), "serving");
    Ok(ServeHandle { shutdown: tx, workers, chains })
}
