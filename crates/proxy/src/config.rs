//! The `wasmux serve` configuration: YAML, checked as a whole before anything starts.
//!
//! Words follow Envoy's where it has one: listeners, routes, clusters, plugins with a `vm`
//! (`vm_id`, `runtime`, `code`, `configuration`), `root_id`, `configuration`, `failure_policy`.
//! Every error names the field and the line it is on.
//!
//! ```yaml
//! workers: 2
//! admin: { address: "127.0.0.1:9901" }
//! listeners:
//!   - name: main
//!     address: "127.0.0.1:8080"
//!     routes:
//!       - match: { prefix: "/" }
//!         cluster: backend
//!         filters: [add-header]
//!         timeout_ms: 15000
//! clusters:
//!   - name: backend
//!     endpoints: ["127.0.0.1:9000"]
//! plugins:
//!   - name: add-header
//!     configuration: "x-demo: 1"
//!     vm: { runtime: wasmtime, code: headers.wasm }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use marked_yaml::Spanned;
use serde::Deserialize;
use wasmux::FailurePolicy;
use wasmux::scenario::ScenarioLimits;

/// A configuration error: what is wrong, and where.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ConfigError {
    /// The file (or `<config>` for text).
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// What is wrong, starting with the field's path.
    pub message: String,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Worker threads: each runs its own event loop and its own instance of every plugin
    /// (default 1).
    #[serde(default)]
    pub workers: Option<Spanned<usize>>,
    /// Seconds a graceful shutdown (SIGTERM) waits for requests in flight (default 5).
    #[serde(default)]
    pub drain_seconds: Option<u64>,
    /// The admin listener (`/ready`, `/metrics`).
    #[serde(default)]
    pub admin: Option<Admin>,
    /// Listeners.
    pub listeners: Vec<Listener>,
    /// Clusters.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// Plugins.
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `host:port`.
    pub address: Spanned<String>,
}

/// A listener with its routes (Envoy: a listener with an HTTP connection manager and its
/// route table).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Name (unique).
    pub name: Spanned<String>,
    /// `host:port`.
    pub address: Spanned<String>,
    /// Routes, tried in order; the first match wins. No match: 404.
    pub routes: Vec<Route>,
}

/// A route: a match, then a cluster and a filter chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// What requests it takes.
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
    /// The upstream cluster.
    pub cluster: Spanned<String>,
    /// HTTP filters (plugin names), in request order; responses go through them in reverse.
    #[serde(default)]
    pub filters: Vec<Spanned<String>>,
    /// Time from the request's start to the end of the upstream response headers, filters
    /// included; past it the client gets 504 (default 15 000, Envoy's default; 0 disables).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// How a route matches (Envoy: a virtual host's domains and a route's prefix).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Host (`:authority` without the port): exact, `*.suffix`, or `*` (default: any).
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// Path prefix (default `/`).
    #[serde(default)]
    pub prefix: Option<Spanned<String>>,
}

/// A cluster: named upstream endpoints, for routes and for filters' callouts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Name (unique).
    pub name: Spanned<String>,
    /// `ip:port` endpoints, used round robin.
    pub endpoints: Vec<Spanned<String>>,
    /// TCP connect timeout in milliseconds (default 5000, Envoy's).
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
}

/// A plugin: one filter configuration (Envoy: `envoy.extensions.wasm.v3.PluginConfig`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Name (unique; routes list it).
    pub name: Spanned<String>,
    /// Root id.
    #[serde(default)]
    pub root_id: String,
    /// Plugin configuration (`proxy_on_configure`): a string, or any YAML value, passed as JSON.
    #[serde(default)]
    pub configuration: Option<serde_json::Value>,
    /// `fail_closed` (default), `fail_open` or `reload`.
    #[serde(default)]
    pub failure_policy: Option<Spanned<String>>,
    /// Envoy's `allow_on_headers_stop_iteration` (default false): a filter that pauses the
    /// request headers (StopIteration) holds them while the request body flows to it, up to
    /// 64 KiB (413 past it), instead of stopping the body too.
    #[serde(default)]
    pub allow_on_headers_stop_iteration: bool,
    /// The VM.
    pub vm: VmConfig,
    /// Resource limits and quotas (the scenario format's `limits`).
    #[serde(default)]
    pub limits: ScenarioLimits,
}

/// The VM a plugin runs in. Plugins with the same `vm_id`, runtime, code, configuration and
/// environment share one VM per worker, a root context each.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// VM id (default empty).
    #[serde(default)]
    pub vm_id: String,
    /// Engine (`wasmux engines` lists them; default `wasmtime`).
    #[serde(default)]
    pub runtime: Option<Spanned<String>>,
    /// The module: a path, relative to the configuration file.
    pub code: Spanned<String>,
    /// VM configuration (`proxy_on_vm_start`): a string, or any YAML value, passed as JSON.
    #[serde(default)]
    pub configuration: Option<serde_json::Value>,
    /// WASI environment variables.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Whether each worker's instance starts from a snapshot of a VM started once at load
    /// (`wasmux::SnapshotPolicy`): `off` (default), `when_safe`, or `freeze_clock_and_random`.
    /// The first plugin of a shared VM decides.
    #[serde(default)]
    pub snapshot: wasmux::SnapshotPolicy,
}

fn line_of<T>(s: &Spanned<T>) -> usize {
    s.span().start().map_or(0, marked_yaml::Marker::line)
}

/// Bytes for a configuration value: a string as is, anything else as JSON.
pub(crate) fn config_bytes(value: Option<&serde_json::Value>) -> Vec<u8> {
    match value {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
        Some(other) => other.to_string().into_bytes(),
    }
}

impl Config {
    /// Reads and checks a configuration file. Module paths are relative to its directory.
    ///
    /// # Errors
    /// An unreadable file, bad YAML, an unknown or missing field, a bad value, or a reference
    /// to something that does not exist: each with its line.
    pub fn from_file(path: &Path) -> Result<(Self, PathBuf), ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        let config = Self::parse(&text, &file)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok((config, base))
    }

    /// Parses and checks configuration text; `file` names it in errors.
    ///
    /// # Errors
    /// As [`Self::from_file`].
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let err = |line: usize, message: String| ConfigError { file: file.to_string(), line, message };
        let options = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true).prevent_coercion(false);
        let node = marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| {
            let line = load_error_line(&e);
            err(line, format!("invalid YAML: {e}"))
        })?;
        let config: Self = marked_yaml::from_node(&node).map_err(|e| {
            let line = e.start_mark().map_or(0, |m| m.line());
            let path = e.path().map(|p| format!("{p}: ")).unwrap_or_default();
            err(line, format!("{path}{}", *e))
        })?;
        config.check().map_err(|(line, message)| err(line, message))?;
        Ok(config)
    }

    /// Worker threads.
    pub fn workers(&self) -> usize {
        self.workers.as_ref().map_or(1, |w| **w)
    }

    /// Graceful-shutdown drain time.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds.unwrap_or(5))
    }

    fn check(&self) -> Result<(), (usize, String)> {
        if let Some(w) = &self.workers
            && !(1..=1024).contains(&**w)
        {
            return Err((line_of(w), format!("workers: {} is not between 1 and 1024", **w)));
        }
        if let Some(a) = &self.admin {
            parse_addr(&a.address, "admin.address")?;
        }
        if self.listeners.is_empty() {
            return Err((0, "listeners: at least one listener is needed".into()));
        }
        let mut clusters = BTreeMap::new();
        for (i, c) in self.clusters.iter().enumerate() {
            if clusters.insert(c.name.as_str(), ()).is_some() {
                return Err((line_of(&c.name), format!("clusters[{i}].name: `{}` is defined twice", *c.name)));
            }
            if c.endpoints.is_empty() {
                return Err((line_of(&c.name), format!("clusters[{i}].endpoints: cluster `{}` has none", *c.name)));
            }
            for (j, e) in c.endpoints.iter().enumerate() {
                parse_addr(e, &format!("clusters[{i}].endpoints[{j}]"))?;
            }
        }
        let mut plugins = BTreeMap::new();
        for (i, p) in self.plugins.iter().enumerate() {
            if plugins.insert(p.name.as_str(), ()).is_some() {
                return Err((line_of(&p.name), format!("plugins[{i}].name: `{}` is defined twice", *p.name)));
            }
            if let Some(r) = &p.vm.runtime
                && r.parse::<wasmux::Runtime>().is_err()
            {
                let known: Vec<&str> = wasmux::Runtime::available().iter().map(|r| r.name()).collect();
                return Err((
                    line_of(r),
                    format!("plugins[{i}].vm.runtime: `{}` is not an engine of this build ({})", **r, known.join(", ")),
                ));
            }
            if let Some(f) = &p.failure_policy {
                policy(f).map_err(|m| (line_of(f), format!("plugins[{i}].failure_policy: {m}")))?;
            }
        }
        let mut listeners = BTreeMap::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if listeners.insert(l.name.as_str(), ()).is_some() {
                return Err((line_of(&l.name), format!("listeners[{i}].name: `{}` is defined twice", *l.name)));
            }
            parse_addr(&l.address, &format!("listeners[{i}].address"))?;
            for (j, r) in l.routes.iter().enumerate() {
                let at = format!("listeners[{i}].routes[{j}]");
                if !clusters.contains_key(r.cluster.as_str()) {
                    return Err((line_of(&r.cluster), format!("{at}.cluster: no cluster is named `{}`", *r.cluster)));
                }
                for (k, f) in r.filters.iter().enumerate() {
                    if !plugins.contains_key(f.as_str()) {
                        return Err((line_of(f), format!("{at}.filters[{k}]: no plugin is named `{}`", **f)));
                    }
                }
                if let Some(p) = &r.matcher.prefix
                    && !p.starts_with('/')
                {
                    return Err((line_of(p), format!("{at}.match.prefix: `{}` does not start with `/`", **p)));
                }
            }
        }
        Ok(())
    }

    /// The failure policy of a plugin (default fail closed; `reload` waits 1 s before the
    /// first reload, doubling up to 60 s).
    pub fn policy(p: &PluginConfig) -> FailurePolicy {
        p.failure_policy.as_ref().and_then(|f| policy(f).ok()).unwrap_or_default()
    }
}

fn policy(name: &str) -> Result<FailurePolicy, String> {
    match name {
        "fail_closed" | "FAIL_CLOSED" => Ok(FailurePolicy::FailClosed),
        "fail_open" | "FAIL_OPEN" => Ok(FailurePolicy::FailOpen),
        "reload" | "FAIL_RELOAD" => {
            Ok(FailurePolicy::Reload { base_backoff: Duration::from_secs(1), max_backoff: Duration::from_secs(60) })
        }
        other => Err(format!("`{other}` is not one of fail_closed, fail_open, reload")),
    }
}

fn parse_addr(s: &Spanned<String>, at: &str) -> Result<SocketAddr, (usize, String)> {
    s.parse::<SocketAddr>().map_err(|e| (line_of(s), format!("{at}: `{}` is not an ip:port address ({e})", s.as_str())))
}

/// The socket address of a checked `ip:port` field.
pub(crate) fn addr(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

fn load_error_line(e: &marked_yaml::LoadError) -> usize {
    use marked_yaml::LoadError as L;
    match e {
        L::TopLevelMustBeMapping(m)
        | L::TopLevelMustBeSequence(m)
        | L::UnexpectedAnchor(m)
        | L::MappingKeyMustBeScalar(m)
        | L::UnexpectedTag(m)
        | L::ScanError(m, _) => m.line(),
        L::DuplicateKey(d) => d.key.span().start().map_or(0, marked_yaml::Marker::line),
    }
}
