//! `wasmux bench`: the engine comparison of `benches/` as one command, on the user's
//! own filter, with plain timing loops (no criterion) so that it runs anywhere in seconds.
//!
//! Every measure runs on every engine asked for. A fast operation is timed in batches
//! calibrated to about [`BATCH`] each, after [`WARM_UP`] of warm-up; a slow one (a compile) one
//! at a time. The figure reported is the median of the runs, with the minimum and maximum
//! beside it in the JSON. Measures:
//!
//! | id | what | default filter |
//! |---|---|---|
//! | `cold_start` | compile + check + first instance (`on_vm_start`, `on_configure`) | bench-json |
//! | `cache_load_memory`, `cache_load_disk` | `ModuleCache::load` from each tier (no instance) | bench-json |
//! | `warm_start_memory`, `warm_start_disk` | cache load + first instance | bench-json |
//! | `instantiate` | a per-worker clone: `compiled.instantiate()` | bench-json |
//! | `instantiate_snapshot` | the same from a snapshot (`PluginOptions::snapshot`, `freeze_clock_and_random`) | bench-json |
//! | `empty_callback` | one host→wasm call of an empty export | built-in WAT |
//! | `host_call` | one `proxy_get_header_map_value` round trip, small value | built-in WAT |
//! | `request_lifecycle` | context, request headers, response headers, done/log/delete | headers |
//! | `body_1KiB`, `body_64KiB`, `body_1MiB` | a request with one body chunk, in MB/s | body (`chunked`) |
//! | `rss_1`, `rss_10`, `rss_100` | resident memory per extra instance, 1/10/100 instances | headers |
//!
//! `--filter FILE` replaces every default filter (give its configuration with `--config`).
//! Filter logs go to a sink that drops them, at level info. Memory is measured first, in a
//! fresh process per engine (`wasmux bench --rss-child`), so that heap freed by other measures
//! or engines does not hide the pages new instances take.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use wasmux::abi::WasmEngine;
use wasmux::abi::services::{LogLine, LogSink};
use wasmux::{
    CompiledPlugin, HeaderMap, LogLevel, ModuleCache, Plugin, PluginOptions, Runtime, Services, SnapshotPolicy,
    SnapshotStatus,
};

/// The fixtures the defaults use, built into the binary so that `wasmux bench` works anywhere.
const BENCH_JSON: &[u8] = include_bytes!("../../../conformance/fixtures/wasm/bench-json.wasip1.wasm");
const HEADERS: &[u8] = include_bytes!("../../../conformance/fixtures/wasm/headers.wasip1.wasm");
const BODY: &[u8] = include_bytes!("../../../conformance/fixtures/wasm/body.wasip1.wasm");

/// The configuration given to bench-json: parsed by every new instance.
const BENCH_JSON_CONFIG: &str = r#"{"header":"x-json-summary","max_depth":16,"redact":["password","token"],"response_headers":{"x-filter":"bench-json"}}"#;

/// A module whose guest loop calls `proxy_get_header_map_value` `n` times, and an empty export
/// (the module of the criterion bench `hostcall`).
const HOSTCALL_WAT: &str = include_str!("../../../benches/hostcall.wat");

/// Target duration of one timed batch of a fast operation.
const BATCH: Duration = Duration::from_millis(20);
/// Warm-up before the timed batches of a fast operation.
const WARM_UP: Duration = Duration::from_millis(300);

/// Command-line settings of one `wasmux bench`.
#[derive(Debug)]
pub(crate) struct Args {
    /// Engines (every engine compiled in when empty).
    pub(crate) engines: Vec<String>,
    /// The user's filter, for every filter-based measure.
    pub(crate) filter: Option<PathBuf>,
    /// Its plugin configuration.
    pub(crate) config: Option<String>,
    /// Where to write the JSON report.
    pub(crate) json: Option<PathBuf>,
    /// Timed runs per measure (median reported).
    pub(crate) runs: usize,
    /// The command line, recorded in the report.
    pub(crate) command: String,
    /// Internal: measure memory only, for the first engine, and print it as JSON (the parent
    /// `wasmux bench` runs this in a fresh process per engine, so that no heap left over by
    /// other measures or engines is reused by the instances it counts).
    pub(crate) rss_child: bool,
}

/// A log sink that drops every record.
#[derive(Debug)]
struct DropLog;

impl LogSink for DropLog {
    fn log(&self, _line: &LogLine<'_>) {}
}

/// One filter with its configuration, as a measure uses it.
#[derive(Debug, Clone)]
struct Filter {
    name: String,
    bytes: Arc<[u8]>,
    config: Vec<u8>,
    /// For a built-in fixture: its crate directory, to find its native build for the null engine.
    fixture: Option<&'static str>,
}

impl Filter {
    fn builtin(fixture: &'static str, bytes: &[u8], config: &str) -> Self {
        Self {
            name: format!("{fixture}.wasip1.wasm"),
            bytes: bytes.into(),
            config: config.as_bytes().to_vec(),
            fixture: Some(fixture),
        }
    }

    /// What `engine` loads: the module itself, or for the null engine (native filters only)
    /// the native build of a built-in fixture (`scripts/build-native-fixtures.sh`) when this
    /// checkout has one.
    fn for_engine(&self, engine: &dyn WasmEngine) -> Self {
        let Some(fixture) = self.fixture.filter(|_| engine.name() == "null") else { return self.clone() };
        let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
            "../../conformance/fixtures/target/{}-unknown-linux-gnu/release/libfixture_{}.so",
            std::env::consts::ARCH,
            fixture.replace('-', "_")
        ));
        match lib.canonicalize() {
            Ok(path) => Self {
                name: format!("libfixture_{}.so", fixture.replace('-', "_")),
                bytes: path.to_string_lossy().as_bytes().into(),
                ..self.clone()
            },
            Err(_) => self.clone(),
        }
    }

    fn options(&self) -> PluginOptions {
        PluginOptions {
            name: "bench".into(),
            plugin_configuration: self.config.clone(),
            log_level: LogLevel::Info,
            services: Services { log: Arc::new(DropLog), ..Services::default() },
            ..PluginOptions::default()
        }
    }

    fn load(&self, engine: &Arc<dyn WasmEngine>) -> Result<Arc<CompiledPlugin>, String> {
        CompiledPlugin::new(engine.clone(), &self.bytes, self.options()).map_err(|e| e.to_string())
    }
}

/// Summary of the runs of one measure, in the measure's unit.
#[derive(Debug, Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
    runs: usize,
}

impl Stats {
    /// The same runs in a unit `1/factor` times as large (nanoseconds to microseconds: 1e-3).
    fn scaled(self, factor: f64) -> Self {
        Self { median: self.median * factor, min: self.min * factor, max: self.max * factor, runs: self.runs }
    }

    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
        Self { median, min: values[0], max: values[n - 1], runs: n }
    }
}

/// What one measure gave on one engine.
#[derive(Debug)]
struct Measure {
    id: &'static str,
    label: &'static str,
    unit: &'static str,
    filter: String,
    result: Result<Stats, String>,
    extra: Value,
}

/// Times `iters` iterations of an operation: `f(iters)` returns the elapsed time.
type Batch<'a> = dyn FnMut(u64) -> Result<Duration, String> + 'a;

/// Calibrates a batch size to about [`BATCH`], warms up, then times `runs` batches. Returns
/// nanoseconds per iteration.
fn time_fast(runs: usize, f: &mut Batch<'_>) -> Result<Stats, String> {
    let mut iters = 1u64;
    loop {
        let t = f(iters)?;
        if t >= BATCH / 4 || iters >= 1 << 30 {
            let per = t.as_secs_f64() / iters as f64;
            iters = ((BATCH.as_secs_f64() / per.max(1e-12)) as u64).clamp(1, 1 << 32);
            break;
        }
        iters *= 4;
    }
    let start = Instant::now();
    while start.elapsed() < WARM_UP {
        f(iters)?;
    }
    let mut values = Vec::with_capacity(runs);
    for _ in 0..runs {
        values.push(f(iters)?.as_nanos() as f64 / iters as f64);
    }
    Ok(Stats::of(values))
}

/// Times `runs` single runs of a slow operation after one warm-up run. Returns milliseconds.
fn time_slow(runs: usize, mut f: impl FnMut() -> Result<Duration, String>) -> Result<Stats, String> {
    f()?;
    let values = (0..runs).map(|_| f().map(|d| d.as_secs_f64() * 1e3)).collect::<Result<Vec<_>, _>>()?;
    Ok(Stats::of(values))
}

/// Times `make` alone (not the drop of what it made), `iters` times.
fn timed<T>(iters: u64, mut make: impl FnMut() -> Result<T, String>) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let made = make()?;
        total += start.elapsed();
        drop(made);
    }
    Ok(total)
}

/// One full request through a headers-style filter.
fn lifecycle(plugin: &mut Plugin) -> Result<(), String> {
    let e = |e: wasmux::Error| e.to_string();
    let id = plugin.http_stream().map_err(e)?;
    let request = HeaderMap::from_pairs([(":method", "GET"), (":path", "/api"), (":authority", "example.com")]);
    plugin.request_headers(id, request, true).map_err(e)?;
    let response = HeaderMap::from_pairs([(":status", "200"), ("content-type", "text/plain")]);
    plugin.response_headers(id, response, true).map_err(e)?;
    plugin.finish(id).map_err(e)?;
    Ok(())
}

/// One request with a body of one chunk.
fn body(plugin: &mut Plugin, data: &[u8]) -> Result<(), String> {
    let e = |e: wasmux::Error| e.to_string();
    let id = plugin.http_stream().map_err(e)?;
    plugin.request_headers(id, HeaderMap::from_pairs([(":path", "/upload")]), false).map_err(e)?;
    plugin.request_body(id, data, true).map_err(e)?;
    plugin.finish(id).map_err(e)?;
    Ok(())
}

/// Resident set size of this process in bytes (Linux `/proc/self/statm`).
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The filters each group of measures uses.
struct Filters {
    start: Filter,
    lifecycle: Filter,
    body: Filter,
}

/// Runs every measure on one engine.
fn run_engine(
    engine: &Arc<dyn WasmEngine>,
    filters: &Filters,
    runs: usize,
    scratch: &Path,
    memory: Result<(u64, Vec<f64>), String>,
) -> Vec<Measure> {
    let filters = &Filters {
        start: filters.start.for_engine(&**engine),
        lifecycle: filters.lifecycle.for_engine(&**engine),
        body: filters.body.for_engine(&**engine),
    };
    let mut out = Vec::new();
    let mut push = |id, label, unit, filter: &Filter, result, extra| {
        out.push(Measure { id, label, unit, filter: filter.name.clone(), result, extra });
    };
    let err = |e: wasmux::Error| e.to_string();

    let (guest, rss_results) = match memory {
        Ok((guest, per)) => (json!({"guest_memory_bytes": guest}), per.into_iter().map(Ok).collect()),
        Err(e) => (Value::Null, vec![Err(e.clone()), Err(e.clone()), Err(e)]),
    };
    for ((id, label), result) in [
        ("rss_1", "RSS per extra instance, 1 extra"),
        ("rss_10", "RSS per extra instance, 10 extra"),
        ("rss_100", "RSS per extra instance, 100 extra"),
    ]
    .into_iter()
    .zip(rss_results)
    {
        let result = result.map(|kib: f64| Stats { median: kib, min: kib, max: kib, runs: 1 });
        push(id, label, "KiB", &filters.lifecycle, result, guest.clone());
    }

    // Start-up.
    let start = &filters.start;
    let cold = time_slow(runs, || {
        timed(1, || {
            let compiled = CompiledPlugin::new(engine.clone(), &start.bytes, start.options()).map_err(err)?;
            compiled.instantiate().map_err(err)
        })
    });
    push("cold_start", "cold start: compile + first instance", "ms", start, cold, Value::Null);

    let memory = ModuleCache::in_memory();
    let disk_dir = scratch.join(engine.name());
    let _ = std::fs::remove_dir_all(&disk_dir);
    let disk = ModuleCache::on_disk(&disk_dir).map(|c| c.memory_capacity(0)).map_err(|e| e.to_string());
    let cacheable = (|| -> Result<(), String> {
        let module = engine.compile(&start.bytes).map_err(err)?;
        engine.serialize(&*module).ok_or("the engine cannot serialize modules")?;
        disk.as_ref().map_err(|e| format!("cache directory: {e}"))?;
        Ok(())
    })();
    for (id, label, cache) in [
        ("cache_load_memory", "cache load, memory tier", Some(&memory)),
        ("cache_load_disk", "cache load, disk tier", disk.as_ref().ok()),
    ] {
        let result = cacheable.clone().and_then(|()| {
            let cache = cache.ok_or("no cache")?;
            cache.load(&**engine, &start.bytes).map_err(err)?;
            time_slow(runs, || timed(1, || cache.load(&**engine, &start.bytes).map_err(err)))
        });
        push(id, label, "ms", start, result, Value::Null);
    }
    for (id, label, cache) in [
        ("warm_start_memory", "warm start from the memory cache", Some(&memory)),
        ("warm_start_disk", "warm start from the disk cache", disk.as_ref().ok()),
    ] {
        let result = cacheable.clone().and_then(|()| {
            let cache = cache.ok_or("no cache")?;
            time_slow(runs, || {
                timed(1, || {
                    let compiled = cache.load_plugin(engine.clone(), &start.bytes, start.options()).map_err(err)?;
                    compiled.instantiate().map_err(err)
                })
            })
        });
        push(id, label, "ms", start, result, Value::Null);
    }
    let _ = std::fs::remove_dir_all(&disk_dir);

    // A per-worker instance, without and from a snapshot, in microseconds.
    let per_worker = |compiled: Arc<CompiledPlugin>| {
        time_fast(runs, &mut |iters| timed(iters, || compiled.instantiate().map_err(err))).map(|s| s.scaled(1e-3))
    };
    let clone = start.load(engine).and_then(per_worker);
    push("instantiate", "per-worker clone: new instance + on_vm_start + on_configure", "µs", start, clone, Value::Null);

    let snapshot_options = PluginOptions { snapshot: SnapshotPolicy::FreezeClockAndRandom, ..start.options() };
    let snapshotted = CompiledPlugin::new(engine.clone(), &start.bytes, snapshot_options).map_err(err);
    let status = snapshotted.as_ref().map_or(Value::Null, |c| json!({ "snapshot": c.snapshot_status().to_string() }));
    let clone = snapshotted.and_then(|compiled| match compiled.snapshot_status() {
        SnapshotStatus::Taken { .. } => per_worker(compiled),
        other => Err(format!("no snapshot: {other}")),
    });
    push(
        "instantiate_snapshot",
        "per-worker clone from a snapshot (freeze_clock_and_random)",
        "µs",
        start,
        clone,
        status,
    );

    // Calls.
    let micro = Filter { name: "built-in WAT".into(), bytes: Arc::from([]), config: Vec::new(), fixture: None };
    let (empty, host) = match calls(engine, runs) {
        Ok((e, h)) => (Ok(e), Ok(h)),
        Err(e) => (Err(e.clone()), Err(e)),
    };
    push("empty_callback", "empty callback (host → wasm)", "ns", &micro, empty, Value::Null);
    push("host_call", "host call round trip (get_header_map_value)", "ns", &micro, host, Value::Null);

    // Requests.
    let life = filters.lifecycle.load(engine).and_then(|compiled| {
        let mut plugin = compiled.instantiate().map_err(err)?;
        time_fast(runs, &mut |iters| {
            let start = Instant::now();
            for _ in 0..iters {
                lifecycle(&mut plugin)?;
            }
            Ok(start.elapsed())
        })
    });
    let life = life.map(|s| s.scaled(1e-3));
    push("request_lifecycle", "full HTTP request lifecycle", "µs", &filters.lifecycle, life, Value::Null);

    let body_compiled = filters.body.load(engine);
    for (id, label, size) in [
        ("body_1KiB", "body throughput, 1 KiB", 1usize << 10),
        ("body_64KiB", "body throughput, 64 KiB", 64 << 10),
        ("body_1MiB", "body throughput, 1 MiB", 1 << 20),
    ] {
        let data: Vec<u8> = b"{\"key\": \"value\", \"n\": 12345}\n".iter().copied().cycle().take(size).collect();
        let result = body_compiled
            .clone()
            .and_then(|compiled| {
                let mut plugin = compiled.instantiate().map_err(err)?;
                time_fast(runs, &mut |iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        body(&mut plugin, &data)?;
                    }
                    Ok(start.elapsed())
                })
            })
            // ns per body → MB/s (10^6 bytes per second); the median stays the median, min and max swap.
            .map(|s| {
                let mbs = |ns: f64| size as f64 / ns * 1e3;
                Stats { median: mbs(s.median), min: mbs(s.max), max: mbs(s.min), runs: s.runs }
            });
        push(
            id,
            label,
            "MB/s",
            &filters.body,
            result,
            json!({"bytes": size, "config": String::from_utf8_lossy(&filters.body.config)}),
        );
    }
    out
}

/// Empty callback and host call round trip, in ns, on the built-in module.
fn calls(engine: &Arc<dyn WasmEngine>, runs: usize) -> Result<(Stats, Stats), String> {
    let err = |e: wasmux::Error| e.to_string();
    let wasm = wat::parse_str(HOSTCALL_WAT).map_err(|e| e.to_string())?;
    let compiled = CompiledPlugin::new(engine.clone(), &wasm, PluginOptions::default()).map_err(err)?;
    let mut plugin = compiled.instantiate().map_err(err)?;
    let id = plugin.http_stream().map_err(err)?;
    let headers = HeaderMap::from_pairs([(":path", "/"), ("x-key", "small-value"), ("accept", "*/*")]);
    plugin.request_headers(id, headers, false).map_err(err)?;
    let vm = plugin.vm().instance();
    let get = vm.lookup("bench_get").ok_or("no bench_get export")?;
    let empty = vm.lookup("empty").ok_or("no empty export")?;
    if vm.call(get, &[10]).map_err(err)? != Some(0) {
        return Err("proxy_get_header_map_value did not return OK".into());
    }
    let empty_stats = time_fast(runs, &mut |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            vm.call(empty, &[]).map_err(err)?;
        }
        Ok(start.elapsed())
    })?;
    // The loop runs inside the guest: the figure excludes the host → wasm entry.
    let host_stats = time_fast(runs, &mut |iters| {
        let start = Instant::now();
        let mut left = iters;
        while left > 0 {
            let n = left.min(1 << 20);
            vm.call(get, &[n]).map_err(err)?;
            left -= n;
        }
        Ok(start.elapsed())
    })?;
    Ok((empty_stats, host_stats))
}

/// Resident memory per extra instance for 1, 10 and 100 extra instances beside a first one, in
/// KiB, and the guest's linear memory size in bytes.
fn measure_rss(engine: &Arc<dyn WasmEngine>, filter: &Filter) -> Result<(u64, Vec<f64>), String> {
    let err = |e: wasmux::Error| e.to_string();
    let compiled = filter.load(engine)?;
    // The first instance stays: what the engine and module allocate once is not "extra".
    let mut first = compiled.instantiate().map_err(err)?;
    let base = rss().ok_or("/proc/self/statm is not readable")?;
    let mut extra = Vec::with_capacity(100);
    let mut per = Vec::new();
    for n in [1usize, 10, 100] {
        while extra.len() < n {
            extra.push(compiled.instantiate().map_err(err)?);
        }
        let grown = rss().unwrap_or(base).saturating_sub(base);
        per.push(grown as f64 / n as f64 / 1024.0);
    }
    let guest = first.vm().instance().memory_size();
    Ok((guest, per))
}

/// Memory per instance measured in a fresh `wasmux bench --rss-child` process for `rt` (falls
/// back to this process when the child cannot run).
fn rss_in_child(rt: Runtime, args: &Args, filters: &Filters) -> Result<(u64, Vec<f64>), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string());
    let mut cmd = exe.map(std::process::Command::new);
    if let Ok(cmd) = &mut cmd {
        cmd.args(["bench", "--rss-child", "--engine", rt.name()]);
        if let Some(filter) = &args.filter {
            cmd.arg("--filter").arg(filter);
        }
        if let Some(config) = &args.config {
            cmd.arg("--config").arg(config);
        }
    }
    let output = cmd.and_then(|mut c| c.stderr(std::process::Stdio::inherit()).output().map_err(|e| e.to_string()));
    let parsed = output.ok().and_then(|o| {
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        serde_json::from_str::<Value>(text.lines().last()?).ok()
    });
    match parsed {
        Some(v) if v["error"].is_string() => Err(v["error"].as_str().unwrap_or_default().to_string()),
        Some(v) => {
            let per: Option<Vec<f64>> =
                v["per_instance_kib"].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect());
            match (v["guest_memory_bytes"].as_u64(), per) {
                (Some(guest), Some(per)) if per.len() == 3 => Ok((guest, per)),
                _ => Err(format!("unexpected memory report: {v}")),
            }
        }
        None => {
            let engine = rt.engine().map_err(|e| e.to_string())?;
            measure_rss(&engine, &filters.lifecycle.for_engine(&*engine))
        }
    }
}

/// Formats a value for the table.
fn show(m: &Measure) -> String {
    match &m.result {
        Ok(s) if s.median >= 100.0 => format!("{:.0} {}", s.median, m.unit),
        Ok(s) if s.median >= 10.0 => format!("{:.1} {}", s.median, m.unit),
        Ok(s) => format!("{:.2} {}", s.median, m.unit),
        Err(_) => "n/a".into(),
    }
}

/// Today's date (UTC), `YYYY-MM-DD`, and the time, `HH:MM:SS`.
fn utc_now() -> (String, String) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}-{month:02}-{day:02}"), format!("{:02}:{:02}:{:02}", rest / 3600, rest / 60 % 60, rest % 60))
}

/// What the report says about the machine.
fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let mem_kib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").and_then(|r| r.trim().trim_end_matches(" kB").parse::<u64>().ok()));
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "memory_gib": mem_kib.map(|k| (k as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}

fn load_average() -> Value {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = text.split_whitespace().take(3).filter_map(|x| x.parse().ok()).collect();
    json!(v)
}

/// Runs `wasmux bench`.
///
/// # Errors
/// Unknown engines, an unreadable filter, an unwritable JSON file.
pub(crate) fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let runtimes: Vec<Runtime> = if args.engines.is_empty() {
        Runtime::available().to_vec()
    } else {
        args.engines.iter().map(|e| e.parse()).collect::<Result<_, _>>()?
    };
    let runs = args.runs.max(1);
    let filters = match &args.filter {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let name =
                path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
            let config = args.config.clone().unwrap_or_default().into_bytes();
            let user = Filter { name, bytes: bytes.into(), config, fixture: None };
            Filters { start: user.clone(), lifecycle: user.clone(), body: user }
        }
        None => Filters {
            start: Filter::builtin("bench-json", BENCH_JSON, BENCH_JSON_CONFIG),
            lifecycle: Filter::builtin("headers", HEADERS, ""),
            body: Filter::builtin("body", BODY, "chunked"),
        },
    };
    if args.rss_child {
        let rt = runtimes.first().copied().unwrap_or_default();
        let engine = rt.engine()?;
        let report = match measure_rss(&engine, &filters.lifecycle.for_engine(&*engine)) {
            Ok((guest, per)) => json!({"guest_memory_bytes": guest, "per_instance_kib": per}),
            Err(e) => json!({"error": e}),
        };
        crate::print_out(&report.to_string());
        return Ok(ExitCode::SUCCESS);
    }
    let scratch = std::env::temp_dir().join(format!("wasmux-bench-{}", std::process::id()));
    let (date, time) = utc_now();
    let load_start = load_average();

    let mut results = Vec::new();
    for rt in &runtimes {
        eprintln!("wasmux bench: {rt} ...");
        let memory = rss_in_child(*rt, &args, &filters);
        let engine = rt.engine()?;
        let measures = run_engine(&engine, &filters, runs, &scratch, memory);
        results.push((*rt, engine.fingerprint(), measures));
    }
    let _ = std::fs::remove_dir_all(&scratch);

    // The table: one row per measure, one column per engine.
    let mut table = String::new();
    let width = 34;
    table.push_str(&format!("{:<width$}", "measure"));
    for (rt, _, _) in &results {
        table.push_str(&format!(" {:>16}", rt.name()));
    }
    table.push('\n');
    if let Some((_, _, first)) = results.first() {
        for (i, m) in first.iter().enumerate() {
            table.push_str(&format!("{:<width$}", m.id));
            for (_, _, measures) in &results {
                table.push_str(&format!(" {:>16}", show(&measures[i])));
            }
            table.push('\n');
        }
    }
    crate::print_out(table.trim_end());
    for (rt, _, measures) in &results {
        for m in measures {
            if let Err(e) = &m.result {
                eprintln!("{rt}/{}: {e}", m.id);
            }
        }
    }

    if let Some(path) = &args.json {
        let engines: Vec<Value> = results
            .iter()
            .map(|(rt, fingerprint, measures)| {
                let ms: Vec<Value> = measures
                    .iter()
                    .map(|m| {
                        let mut v = json!({"id": m.id, "label": m.label, "unit": m.unit, "filter": m.filter});
                        match &m.result {
                            Ok(s) => {
                                v["median"] = json!(s.median);
                                v["min"] = json!(s.min);
                                v["max"] = json!(s.max);
                                v["runs"] = json!(s.runs);
                            }
                            Err(e) => v["error"] = json!(e),
                        }
                        if !m.extra.is_null() {
                            v["extra"] = m.extra.clone();
                        }
                        v
                    })
                    .collect();
                json!({"engine": rt.name(), "fingerprint": fingerprint, "measures": ms})
            })
            .collect();
        let report = json!({
            "wasmux_version": env!("CARGO_PKG_VERSION"),
            "date": date,
            "time_utc": time,
            "command": args.command,
            "machine": machine(),
            "load_average": {"start": load_start, "end": load_average()},
            "settings": {"runs": runs, "batch_ms": BATCH.as_millis() as u64, "warm_up_ms": WARM_UP.as_millis() as u64},
            "engines": engines,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
