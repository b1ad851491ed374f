//! The hostile suite: filters written to crash, hang or exhaust the host, run
//! through the real `wasmux` binary on every sandboxed engine compiled in.
//!
//! Each probe is a WAT module in `tests/hostile/` (three large ones are generated here) with a
//! scenario (`NAME.json`, or the shared `stream.json`: a stream, its request headers, its
//! end). Every run of `wasmux run PROBE.wat --engine E --scenario S.json`:
//!
//! - is bounded in wall time (killed after [`CAP`]: a hang),
//! - has its peak RSS (`VmHWM`, polled every few milliseconds) compared with the peak of the
//!   trivial `baseline` probe on the same engine: at most [`RSS_MARGIN`] above it,
//! - must end by itself with exit code 0 (a record on stdout) or 2 (a load error on stderr),
//!   never by a signal, never with a panic message,
//! - compiles its module cold (a module-cache directory of its own, removed afterwards),
//! - and must show the probe's expected outcome (a trap named on the event, a quota counted
//!   in the record, a load error that says why).
//!
//! Probes run two at a time (the test machine has two cores). Every failure of every run is
//! collected, and the probe x engine matrix is printed, before the test fails.
//!
//! Reproduce one run by hand with, e.g.,
//! `wasmux run crates/cli/tests/hostile/flood_queue.wat --engine wasmi --scenario crates/cli/tests/hostile/stream.json`.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Wall-time cap of one run; a run still going is killed and reported as a hang.
const CAP: Duration = Duration::from_secs(60);
/// Peak RSS allowed above the baseline probe's peak on the same engine.
const RSS_MARGIN: u64 = 256 << 20;
/// A run past this peak RSS is killed (to protect the machine) and reported.
const RSS_KILL: u64 = 3 << 30;
/// Runs at a time.
const PARALLEL: usize = 2;

/// What a probe must show, besides ending cleanly within the bounds.
#[derive(Debug)]
enum Expect {
    /// Exit 0 and `events[i]` names a trap of this kind (`trap.kind`, or `error.trap`).
    Trap(usize, &'static str),
    /// As [`Expect::Trap`], and the trap names this export.
    TrapAt(usize, &'static str, &'static str),
    /// Exit 0 and `events[i].action` is this.
    Action(usize, &'static str),
    /// Exit 0 and the record's `quota` object counts this quota.
    Quota(&'static str),
    /// Exit 0 and no event has an error or a trap.
    Clean,
    /// Exit 0 and start-up failed (`start` is not `"ok"`).
    StartFailed,
    /// Exit 2 and stderr contains this (lower case).
    LoadError(&'static str),
    /// Wall time at most the baseline's plus this many milliseconds.
    Within(u64),
    /// Every one.
    All(&'static [Self]),
    /// At least one.
    Any(&'static [Self]),
}

use Expect::{Action, All, Any, Clean, LoadError, Quota, StartFailed, Trap, TrapAt, Within};

/// A probe: module (default: the probe's name), scenario (default: the probe's name if that
/// file exists, else `stream.json`), expectation.
struct Probe {
    name: &'static str,
    module: Option<&'static str>,
    scenario: Option<&'static str>,
    expect: Expect,
}

const fn probe(name: &'static str, expect: Expect) -> Probe {
    Probe { name, module: None, scenario: None, expect }
}

const fn probe_with(name: &'static str, module: &'static str, scenario: &'static str, expect: Expect) -> Probe {
    Probe { name, module: Some(module), scenario: Some(scenario), expect }
}

/// Probes whose cost is compilation: exempt from the callback-deadline time bound (the
/// 60 s cap and the RSS bound still apply).
const COMPILE_PROBES: &[&str] = &["many_functions", "nested_blocks", "functions_at_limit"];

/// Slack on top of twice the callback deadline, for process start-up and a loaded machine.
const TIME_SLACK: Duration = Duration::from_secs(3);

/// A quota refused repeatedly in one callback: counted, then the callback traps with `quota`
/// (after `max_violations_per_callback`) or at the deadline.
macro_rules! refused {
    ($q:literal) => {
        All(&[Quota($q), Any(&[Trap(1, "quota"), Trap(1, "deadline")])])
    };
}

/// Every probe. `baseline` must come first.
const PROBES: &[Probe] = &[
    probe("baseline", Action(1, "continue")),
    // Host recursion through the guest allocator.
    probe("alloc_recursion", TrapAt(1, "restricted", "proxy_on_request_headers")),
    probe("alloc_recursion_config", StartFailed),
    probe("alloc_loop", All(&[Trap(1, "deadline"), Within(2000)])),
    probe("alloc_grows", Action(1, "continue")),
    // Tables and memories.
    probe("table_grow_loop", Action(1, "continue")),
    probe("table_huge_initial", Any(&[StartFailed, LoadError("table")])),
    probe("table_huge_declared", LoadError("table")),
    probe("undeclared_table", LoadError("table")),
    probe("multi_memory", LoadError("memor")),
    probe("memory_huge_initial", Any(&[StartFailed, LoadError("memor")])),
    // Host-driven re-delivery.
    probe("queue_self_feed", All(&[Clean, Action(4, "continue")])),
    probe("queue_double_feed", All(&[Clean, Quota("queue_items")])),
    // Deadlines that count host time (100 ms deadline: stopped well within 2 s).
    probe("deadline_hostcalls", All(&[Trap(1, "deadline"), Within(2000)])),
    probe("deadline_log", All(&[Trap(1, "deadline"), Within(2000)])),
    probe("deadline_wasi", All(&[Trap(1, "deadline"), Within(2000)])),
    probe("deadline_quota_refusals", All(&[Trap(1, "deadline"), Quota("header_count"), Within(2000)])),
    probe("stack_overflow_hostcalls", Trap(1, "stack_overflow")),
    // Host memory floods, each from one callback, default limits.
    probe("flood_header_8mib", refused!("header_bytes")),
    probe("flood_header_small", refused!("header_count")),
    probe("flood_header_linear", Action(1, "continue")),
    probe("flood_body_append", All(&[Quota("body_bytes"), Any(&[Trap(2, "quota"), Trap(2, "deadline")])])),
    probe("flood_log_8mib", All(&[Quota("log_line"), Any(&[Action(1, "continue"), Trap(1, "deadline")])])),
    probe("flood_log_lines", All(&[Quota("log_lines"), Any(&[Action(1, "continue"), Trap(1, "deadline")])])),
    probe("flood_fd_write", All(&[Quota("log_line"), Any(&[Action(1, "continue"), Trap(1, "deadline")])])),
    probe("flood_shared_keys", refused!("shared_data_keys")),
    probe("flood_shared_8mib", refused!("shared_data_value")),
    probe("flood_shared_bytes", refused!("shared_data_bytes")),
    probe("flood_queue", Any(&[refused!("queue_items"), refused!("queue_bytes")])),
    probe("flood_register_queue", refused!("queues")),
    probe("flood_define_metric", refused!("metrics")),
    probe("flood_histogram", Any(&[Action(1, "continue"), Trap(1, "deadline")])),
    probe("flood_set_property", Any(&[refused!("properties"), refused!("property_bytes")])),
    probe("flood_http_call", refused!("callouts")),
    probe("flood_grpc_send", refused!("grpc_pending_sends")),
    probe("flood_grpc_send_8mib", refused!("callout_bytes")),
    probe("flood_continue_stream", refused!("stream_controls")),
    probe("flood_local_response", Any(&[Action(1, "continue"), Action(1, "pause"), Trap(1, "deadline")])),
    probe("pairs_bogus_count", Any(&[Action(1, "continue"), Trap(1, "deadline")])),
    // Compile bounds (generated modules).
    probe("nested_blocks", LoadError("nest")),
    probe("many_functions", Any(&[LoadError("function"), Action(1, "continue")])),
    // Within the shape limits, what compiling costs (default limits: 60 s compile deadline).
    probe("functions_at_limit", Action(1, "continue")),
    // The same module under a 2 s compile deadline: the run ends by then.
    probe_with(
        "functions_at_limit_compile_deadline",
        "functions_at_limit",
        "compile_deadline",
        All(&[Any(&[LoadError("deadline"), Action(1, "continue")]), Within(2000 + 3000)]),
    ),
    // The baseline module over a 100-byte module limit.
    probe_with("module_too_big", "baseline", "module_too_big", LoadError("byte")),
    // Traps in stream callbacks are named in the record.
    probe("trap_stream", TrapAt(1, "unreachable", "proxy_on_request_headers")),
    probe("trap_tcp", TrapAt(1, "unreachable", "proxy_on_downstream_data")),
];

fn probe_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile")
}

fn tmp_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile");
    std::fs::create_dir_all(&d).expect("create the temporary directory");
    d
}

/// The module file of a probe: `tests/hostile/NAME.wat`, or a module generated by
/// [`generate_modules`].
fn module_path(name: &str) -> PathBuf {
    let p = probe_dir().join(format!("{name}.wat"));
    if p.exists() { p } else { tmp_dir().join(format!("{name}.wasm")) }
}

/// Writes the generated modules as wasm into the target's temporary directory (wasm, so that
/// a run measures the engine and not the CLI's WAT assembler).
fn generate_modules() {
    for (name, text) in [
        ("nested_blocks", generated_nested_blocks()),
        ("many_functions", generated_many_functions()),
        ("functions_at_limit", generated_functions_at_limit()),
    ] {
        let wasm = wat::parse_str(&text).expect("assemble a generated probe");
        let part = tmp_dir().join(format!("{name}.wasm.{}", std::process::id()));
        std::fs::write(&part, wasm).expect("write a generated probe");
        std::fs::rename(&part, module_path(name)).expect("move a generated probe into place");
    }
}

const HEAD: &str = r#"(module
  (memory (export "memory") 1)
  (global $bump (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (local.get $p) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
"#;

/// 100 000 nested blocks in one callback (about 300 KB of wasm): refused at load (nesting).
fn generated_nested_blocks() -> String {
    let mut s = String::from(HEAD);
    s.push_str("  (func (export \"proxy_on_request_headers\") (param i32 i32 i32) (result i32)\n");
    s.push_str(&"block\n".repeat(100_000));
    s.push_str(&"end\n".repeat(100_000));
    s.push_str("(i32.const 0)))\n");
    s
}

/// 100 000 empty functions.
fn generated_many_functions() -> String {
    let mut s = String::from(HEAD);
    s.push_str(&"  (func)\n".repeat(100_000));
    s.push_str("  (func (export \"proxy_on_request_headers\") (param i32 i32 i32) (result i32) (i32.const 0)))\n");
    s
}

/// Just under the function-count limit (30 000): 29 990 functions of 60 arithmetic
/// instructions each (about 4 MB of wasm), within every shape limit wasmux enforces.
fn generated_functions_at_limit() -> String {
    let mut s = String::from(HEAD);
    let body = "i32.const 7 i32.mul i32.const 3 i32.add ".repeat(15);
    let f = format!("  (func (param i32) (result i32) local.get 0 {body})\n");
    s.push_str(&f.repeat(29_990));
    s.push_str("  (func (export \"proxy_on_request_headers\") (param i32 i32 i32) (result i32) (i32.const 0)))\n");
    s
}

/// One finished (or killed) run of the binary.
#[derive(Debug, Default)]
struct Run {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    /// Peak RSS in bytes (VmHWM).
    peak: u64,
    elapsed: Duration,
    timed_out: bool,
    killed_for_rss: bool,
}

fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn drain(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut v);
        }
        v
    })
}

/// Waits for `child`, polling its peak RSS, killing it past [`CAP`] or [`RSS_KILL`].
fn supervise(mut child: Child, start: Instant) -> Run {
    use std::os::unix::process::ExitStatusExt as _;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let pid = child.id();
    let mut run = Run::default();
    let status = loop {
        if let Some(kb) = vm_hwm(pid) {
            run.peak = run.peak.max(kb);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => panic!("waiting for wasmux: {e}"),
        }
        let over_time = start.elapsed() > CAP;
        let over_rss = run.peak > RSS_KILL;
        if over_time || over_rss {
            run.timed_out = over_time;
            run.killed_for_rss = over_rss;
            let _ = child.kill();
            break child.wait().expect("wait for the killed child");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    run.elapsed = start.elapsed();
    run.code = status.code();
    run.signal = if run.timed_out || run.killed_for_rss { None } else { status.signal() };
    run.stdout = out.join().unwrap_or_default();
    run.stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    run
}

/// The sandboxed engines this test binary's features compile in, as `wasmux engines` names
/// them.
fn expected_engines() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "wasmtime") {
        v.push("wasmtime");
    }
    if cfg!(feature = "wasmer") {
        v.extend(["wasmer", "wasmer-singlepass"]);
    }
    if cfg!(feature = "wasmi") {
        v.push("wasmi");
    }
    if cfg!(feature = "wamr") {
        v.push("wamr");
    }
    if cfg!(feature = "v8") {
        v.push("v8");
    }
    v
}

/// The `wasmux` binary built for this test, pinned for the whole run.
///
/// The target directory may be shared with other builds of `wasmux-cli` (other feature sets)
/// that replace `target/debug/wasmux` while the suite runs. The binary is therefore hard-linked
/// (or copied) into the target's temporary directory once, and checked to have this test's
/// engines; if `target/debug/wasmux` was already replaced, the newest `deps/wasmux-*` with the
/// right engines is used.
fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_wasmux"));
        let mut candidates = vec![exe.clone()];
        if let Some(deps) = exe.parent().map(|d| d.join("deps"))
            && let Ok(dir) = std::fs::read_dir(&deps)
        {
            let mut found: Vec<(std::time::SystemTime, PathBuf)> = dir
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("wasmux-") && !n.contains('.'))
                })
                .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
                .collect();
            found.sort_by_key(|f| std::cmp::Reverse(f.0));
            candidates.extend(found.into_iter().map(|(_, p)| p));
        }
        let dir = tmp_dir();
        // Links and module caches left by test processes that are gone go.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(rest) = name.strip_prefix("wasmux-").or_else(|| name.strip_prefix("cache-")) else { continue };
                let pid = rest.split('-').next().unwrap_or("");
                if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                    let _ = if e.path().is_dir() {
                        std::fs::remove_dir_all(e.path())
                    } else {
                        std::fs::remove_file(e.path())
                    };
                }
            }
        }
        let want = expected_engines();
        let mut seen = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            let pinned = dir.join(format!("wasmux-{}-{i}", std::process::id()));
            let _ = std::fs::remove_file(&pinned);
            if std::fs::hard_link(c, &pinned).is_err() && std::fs::copy(c, &pinned).is_err() {
                continue;
            }
            let run = spawn_and_supervise(&pinned, &["engines".as_ref()], &[]);
            let engines = engines_of(&run);
            if engines == want {
                return pinned;
            }
            seen.push(format!("{}: {engines:?}", c.display()));
            let _ = std::fs::remove_file(&pinned);
        }
        panic!("no wasmux binary with the engines {want:?} (another build replaced it?): {}", seen.join(", "))
    })
}

fn engines_of(run: &Run) -> Vec<String> {
    if run.code != Some(0) {
        return Vec::new();
    }
    String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(str::trim)
        .filter(|e| !e.is_empty() && *e != "null")
        .map(String::from)
        .collect()
}

fn wasmux(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Run {
    spawn_and_supervise(binary(), args, env)
}

/// A compiled-module cache directory of its own for one run, so that every run compiles its
/// module cold and the user's cache is left alone. Removed after the run.
fn fresh_cache() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tmp_dir().join(format!("cache-{}-{n}", std::process::id()))
}

fn spawn_and_supervise(bin: &Path, args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let cache = fresh_cache();
    cmd.env_remove("WASMUX_LOG").env("WASMUX_CACHE_DIR", &cache);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let child = cmd.spawn().expect("spawn wasmux");
    let run = supervise(child, start);
    let _ = std::fs::remove_dir_all(&cache);
    run
}

fn scenario_path(p: &Probe) -> PathBuf {
    match p.scenario {
        Some(s) => probe_dir().join(format!("{s}.json")),
        None => {
            let own = probe_dir().join(format!("{}.json", p.name));
            if own.exists() { own } else { probe_dir().join("stream.json") }
        }
    }
}

/// The callback deadline of a probe's scenario (default 1 s; `None` when disabled).
fn deadline(p: &Probe) -> Option<Duration> {
    let text = std::fs::read_to_string(scenario_path(p)).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let ms = v.get("limits").and_then(|l| l.get("deadline_ms")).and_then(Value::as_u64).unwrap_or(1000);
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn run_probe(p: &Probe, engine: &str) -> Run {
    let module = module_path(p.module.unwrap_or(p.name));
    let scenario = scenario_path(p);
    wasmux(
        &[
            "run".as_ref(),
            module.as_os_str(),
            "--engine".as_ref(),
            engine.as_ref(),
            "--scenario".as_ref(),
            scenario.as_os_str(),
        ],
        &[],
    )
}

fn engines() -> Vec<String> {
    let run = wasmux(&["engines".as_ref()], &[]);
    assert_eq!(run.code, Some(0), "wasmux engines: {}", run.stderr);
    engines_of(&run)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn excerpt(s: &str) -> String {
    let s = s.trim();
    let lines: Vec<&str> = s.lines().filter(|l| !l.contains("WARN wasmux::quota")).collect();
    let s = lines.join(" | ");
    if s.chars().count() > 300 { format!("{}…", s.chars().take(300).collect::<String>()) } else { s }
}

/// Failures common to every run (bounds, signals, panics).
fn common_failures(run: &Run, base: Option<&Run>) -> Vec<String> {
    let mut f = Vec::new();
    if run.timed_out {
        f.push(format!("hang: killed after {:.0} s", CAP.as_secs_f64()));
    }
    if run.killed_for_rss {
        f.push(format!("killed at {:.0} MiB RSS", mib(run.peak)));
    }
    if let Some(sig) = run.signal {
        f.push(format!("killed by signal {sig}"));
    }
    if !run.timed_out && !run.killed_for_rss && run.signal.is_none() && !matches!(run.code, Some(0 | 2)) {
        f.push(format!("exit code {:?}", run.code));
    }
    if run.stderr.contains("panicked") {
        f.push("panic message in stderr".into());
    }
    if let Some(base) = base {
        let over = run.peak.saturating_sub(base.peak);
        if over > RSS_MARGIN {
            f.push(format!(
                "peak RSS {:.0} MiB, {:.0} MiB above the baseline's {:.0} MiB (limit {:.0})",
                mib(run.peak),
                mib(over),
                mib(base.peak),
                mib(RSS_MARGIN)
            ));
        }
    }
    f
}

/// The trap kind named on `events[i]`, from `trap.kind` or `error.trap`.
fn trap_on(record: &Value, i: usize) -> Option<(String, String)> {
    let ev = record.get("events")?.get(i)?;
    let (kind, export) = if let Some(t) = ev.get("trap") {
        (t.get("kind")?, t.get("export"))
    } else {
        let e = ev.get("error")?;
        (e.get("trap")?, e.get("export"))
    };
    Some((kind.as_str()?.to_string(), export.and_then(Value::as_str).unwrap_or("").to_string()))
}

/// Checks `e` against a run; `Err` says what was seen instead.
fn check(e: &Expect, run: &Run, record: Option<&Value>, base: Option<&Run>) -> Result<(), String> {
    let need_record = || {
        record.ok_or_else(|| format!("expected a record (exit 0), got exit {:?}: {}", run.code, excerpt(&run.stderr)))
    };
    match e {
        Trap(i, kind) | TrapAt(i, kind, _) => {
            let r = need_record()?;
            match trap_on(r, *i) {
                Some((k, export)) => {
                    if k != *kind {
                        return Err(format!("events[{i}]: trap `{k}`, expected `{kind}`"));
                    }
                    if let TrapAt(_, _, want) = e
                        && export != *want
                    {
                        return Err(format!("events[{i}]: trap in `{export}`, expected `{want}`"));
                    }
                    Ok(())
                }
                None => Err(format!("events[{i}] names no trap (expected `{kind}`): {}", event_text(r, *i))),
            }
        }
        Action(i, want) => {
            let r = need_record()?;
            let got = r.get("events").and_then(|v| v.get(*i)).and_then(|v| v.get("action")).and_then(Value::as_str);
            if got == Some(*want) {
                Ok(())
            } else {
                Err(format!("events[{i}]: expected action `{want}`, got {}", event_text(r, *i)))
            }
        }
        Quota(q) => {
            let r = need_record()?;
            let n = r.get("quota").and_then(|v| v.get(*q)).and_then(Value::as_u64).unwrap_or(0);
            if n > 0 {
                Ok(())
            } else {
                Err(format!("quota `{q}` not counted (quota: {})", r.get("quota").unwrap_or(&Value::Null)))
            }
        }
        Clean => {
            let r = need_record()?;
            let events = r.get("events").and_then(Value::as_array).cloned().unwrap_or_default();
            match events.iter().position(|ev| ev.get("error").is_some() || ev.get("trap").is_some()) {
                None => Ok(()),
                Some(i) => Err(format!("events[{i}] failed: {}", events[i])),
            }
        }
        StartFailed => {
            let r = need_record()?;
            match r.get("start") {
                Some(Value::String(s)) if s == "ok" => Err("start-up succeeded".into()),
                Some(_) => Ok(()),
                None => Err("no `start` in the record".into()),
            }
        }
        LoadError(want) => {
            if run.code != Some(2) {
                let seen = record.map_or_else(
                    || excerpt(&run.stderr),
                    |r| format!("start: {}", r.get("start").unwrap_or(&Value::Null)),
                );
                return Err(format!("expected a load error (exit 2) naming `{want}`, got exit {:?}: {seen}", run.code));
            }
            if run.stderr.to_lowercase().contains(want) {
                Ok(())
            } else {
                Err(format!("load error does not mention `{want}`: {}", excerpt(&run.stderr)))
            }
        }
        Within(ms) => {
            let limit = base.map_or(Duration::ZERO, |b| b.elapsed) + Duration::from_millis(*ms);
            if run.elapsed <= limit {
                Ok(())
            } else {
                Err(format!(
                    "took {:.2} s, more than the baseline's plus {ms} ms ({:.2} s)",
                    run.elapsed.as_secs_f64(),
                    limit.as_secs_f64()
                ))
            }
        }
        All(list) => {
            let errs: Vec<String> = list.iter().filter_map(|e| check(e, run, record, base).err()).collect();
            if errs.is_empty() { Ok(()) } else { Err(errs.join("; ")) }
        }
        Any(list) => {
            let mut errs = Vec::new();
            for e in *list {
                match check(e, run, record, base) {
                    Ok(()) => return Ok(()),
                    Err(m) => errs.push(m),
                }
            }
            Err(format!("none of: {}", errs.join(" / ")))
        }
    }
}

fn event_text(r: &Value, i: usize) -> String {
    r.get("events").and_then(|v| v.get(i)).map_or_else(|| "no such event".into(), ToString::to_string)
}

/// A one-word outcome for the matrix.
fn outcome(run: &Run, record: Option<&Value>) -> String {
    if run.timed_out {
        return "HANG".into();
    }
    if let Some(s) = run.signal {
        return format!("SIG{s}");
    }
    let Some(r) = record else {
        return format!("exit{}", run.code.map_or_else(|| "?".into(), |c| c.to_string()));
    };
    if r.get("start").is_some_and(|s| s != "ok") {
        return "start-err".into();
    }
    let events = r.get("events").and_then(Value::as_array).cloned().unwrap_or_default();
    for (i, _) in events.iter().enumerate() {
        if let Some((k, _)) = trap_on(r, i) {
            return k;
        }
    }
    "ok".into()
}

#[test]
fn hostile_probes_on_every_sandboxed_engine() {
    let engines = engines();
    assert!(!engines.is_empty(), "no sandboxed engine compiled in");
    generate_modules();
    for p in PROBES {
        let m = module_path(p.module.unwrap_or(p.name));
        assert!(m.exists(), "probe `{}`: no module {}", p.name, m.display());
    }
    // Baselines first, then every other probe, the slow compile probes early.
    let mut jobs: VecDeque<(usize, String)> = VecDeque::new();
    for e in &engines {
        jobs.push_back((0, e.clone()));
    }
    let order: Vec<usize> = {
        let mut v: Vec<usize> = (1..PROBES.len()).collect();
        v.sort_by_key(|&i| !COMPILE_PROBES.contains(&PROBES[i].module.unwrap_or(PROBES[i].name)));
        v
    };
    for i in order {
        for e in &engines {
            jobs.push_back((i, e.clone()));
        }
    }
    let jobs = Mutex::new(jobs);
    let results: Mutex<Vec<(usize, String, Run)>> = Mutex::new(Vec::new());
    let suite_start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| {
                loop {
                    let Some((i, engine)) = jobs.lock().expect("jobs").pop_front() else { break };
                    let run = run_probe(&PROBES[i], &engine);
                    results.lock().expect("results").push((i, engine, run));
                }
            });
        }
    });
    let results = results.into_inner().expect("results");
    let find = |i: usize, e: &str| results.iter().find(|(j, en, _)| *j == i && en == e).map(|(_, _, r)| r);

    let mut failures = Vec::new();
    let mut table = String::new();
    let width = PROBES.iter().map(|p| p.name.len()).max().unwrap_or(10);
    let _ = write!(table, "{:width$}", "probe");
    for e in &engines {
        let _ = write!(table, " | {e:^28}");
    }
    table.push('\n');
    for (i, p) in PROBES.iter().enumerate() {
        let _ = write!(table, "{:width$}", p.name);
        for e in &engines {
            let Some(run) = find(i, e) else { continue };
            let base = if i == 0 { None } else { find(0, e) };
            let record: Option<Value> =
                if run.code == Some(0) { serde_json::from_slice(&run.stdout).ok() } else { None };
            let mut f = common_failures(run, base);
            if run.code == Some(0) && record.is_none() {
                f.push(format!("exit 0 but stdout is not a JSON record ({} bytes)", run.stdout.len()));
            }
            if let Err(m) = check(&p.expect, run, record.as_ref(), base) {
                f.push(m);
            }
            // The issue's measure: every probe ends within twice its callback deadline (one
            // hostile callback per probe), plus what the baseline takes.
            if let (Some(base), Some(d)) = (base, deadline(p))
                && !COMPILE_PROBES.contains(&p.module.unwrap_or(p.name))
                && run.elapsed > base.elapsed + 2 * d + TIME_SLACK
            {
                f.push(format!(
                    "took {:.2} s: more than twice the {} ms deadline plus {:.0} s over the baseline's {:.2} s",
                    run.elapsed.as_secs_f64(),
                    d.as_millis(),
                    TIME_SLACK.as_secs_f64(),
                    base.elapsed.as_secs_f64()
                ));
            }
            let over = base.map_or(0.0, |b| mib(run.peak) - mib(b.peak));
            let mark = if f.is_empty() { "ok" } else { "FAIL" };
            let cell =
                format!("{mark} {} {:+.0}M {:.1}s", outcome(run, record.as_ref()), over, run.elapsed.as_secs_f64());
            let _ = write!(table, " | {cell:^28}");
            if !f.is_empty() {
                failures.push(format!(
                    "{e}/{}: {}\n    (exit {:?}, signal {:?}, peak RSS {:.0} MiB ({over:+.0} over baseline), {:.2} s; stderr: {})",
                    p.name,
                    f.join("; "),
                    run.code,
                    run.signal,
                    mib(run.peak),
                    run.elapsed.as_secs_f64(),
                    excerpt(&run.stderr)
                ));
            }
        }
        table.push('\n');
    }
    println!(
        "\nhostile probes x engines (outcome, peak RSS over the baseline, wall time); suite {:.1} s\n{table}",
        suite_start.elapsed().as_secs_f64()
    );
    for e in &engines {
        if let Some(b) = find(0, e) {
            println!("baseline on {e}: peak RSS {:.0} MiB, {:.2} s", mib(b.peak), b.elapsed.as_secs_f64());
        }
    }
    assert!(failures.is_empty(), "{} hostile run(s) failed:\n{}", failures.len(), failures.join("\n"));
}

// CLI robustness.

fn no_panic(what: &str, run: &Run) -> Option<String> {
    let mut f = common_failures(run, None);
    if f.is_empty() {
        return None;
    }
    f.insert(0, what.to_string());
    Some(format!("{}: stderr: {}", f.join(": "), excerpt(&run.stderr)))
}

/// Bad inputs end with a clean error (exit 2), never a panic.
#[test]
fn bad_inputs_are_clean_errors() {
    let dir = tmp_dir();
    let baseline = probe_dir().join("baseline.wat");
    let cases: &[(&str, &str)] = &[
        ("multi-byte UTF-8 in hex", r#"{"vm_config": {"hex": "é1"}, "events": []}"#),
        ("multi-byte UTF-8 in hex (odd bytes)", r#"{"plugin_config": {"hex": "aé"}, "events": []}"#),
        (
            "multi-byte UTF-8 in a hex header",
            r#"{"events": [{"event": "http_stream", "stream": "s"}, {"event": "request_headers", "stream": "s", "headers": [[{"hex": "€€"}, "v"]]}]}"#,
        ),
        ("unknown stream", r#"{"events": [{"event": "request_headers", "stream": "nope", "headers": []}]}"#),
        ("unknown callout", r#"{"events": [{"event": "http_call_response", "call": 7}]}"#),
        ("unknown queue", r#"{"events": [{"event": "enqueue", "queue": "q", "item": "x"}]}"#),
        ("not JSON", "{"),
    ];
    let mut failures = Vec::new();
    for (i, (what, text)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad_{i}.json"));
        std::fs::write(&path, text).expect("write a scenario");
        let run = wasmux(&["run".as_ref(), baseline.as_os_str(), "--scenario".as_ref(), path.as_os_str()], &[]);
        if let Some(f) = no_panic(what, &run) {
            failures.push(f);
        } else if run.code != Some(2) || !run.stderr.starts_with("error:") {
            failures.push(format!(
                "{what}: exit {:?}, expected 2 with `error: ...` on stderr: {}",
                run.code,
                excerpt(&run.stderr)
            ));
        }
    }
    // Modules that are not modules.
    let stream = probe_dir().join("stream.json");
    let modules: &[(&str, &[u8], &str)] = &[
        ("truncated wasm", b"\0asm\x01\0\0\0\x01\x05", "wasm"),
        ("garbage wasm", b"\0asm\x01\0\0\0\xff\xff\xff\xff\xff", "wasm"),
        ("bad wat", b"(module (func (i32.const", "wat"),
        ("empty file", b"", "wasm"),
    ];
    for (i, (what, bytes, ext)) in modules.iter().enumerate() {
        let path = dir.join(format!("bad_{i}.{ext}"));
        std::fs::write(&path, bytes).expect("write a module");
        for cmd in ["run", "inspect"] {
            let mut args: Vec<&std::ffi::OsStr> = vec![cmd.as_ref(), path.as_os_str()];
            if cmd == "run" {
                args.extend(["--scenario".as_ref(), stream.as_os_str()]);
            }
            let run = wasmux(&args, &[]);
            let what = format!("{cmd} {what}");
            if let Some(f) = no_panic(&what, &run) {
                failures.push(f);
            } else if !matches!(run.code, Some(1 | 2)) {
                failures.push(format!("{what}: exit {:?}, expected an error exit: {}", run.code, excerpt(&run.stderr)));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A reader that goes away (`wasmux ... | head -c 1`) ends the command quietly: exit 0, no
/// panic, nothing on stderr.
#[test]
fn closed_stdout_ends_quietly() {
    let baseline = probe_dir().join("baseline.wat");
    let big = probe_dir().join("flood_shared_keys.wat");
    let stream = probe_dir().join("stream.json");
    let commands: Vec<(&str, Vec<&std::ffi::OsStr>, usize)> = vec![
        // Closed before the command writes anything.
        ("inspect, pipe closed at once", vec!["inspect".as_ref(), baseline.as_os_str()], 0),
        ("inspect --json, pipe closed at once", vec!["inspect".as_ref(), "--json".as_ref(), baseline.as_os_str()], 0),
        ("engines, pipe closed at once", vec!["engines".as_ref()], 0),
        // One byte read, then closed, while a large record (MBs) is being written.
        (
            "run, pipe closed after one byte",
            vec!["run".as_ref(), big.as_os_str(), "--scenario".as_ref(), stream.as_os_str()],
            1,
        ),
    ];
    let mut failures = Vec::new();
    for (what, args, read) in commands {
        let mut cmd = Command::new(binary());
        cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let cache = fresh_cache();
        cmd.env("WASMUX_CACHE_DIR", &cache);
        // The large run's quota warnings and trap are not what this test is about: only a
        // panic or an error message about the pipe would show.
        cmd.env("WASMUX_LOG", "off");
        let start = Instant::now();
        let mut child = cmd.spawn().expect("spawn wasmux");
        let mut stdout = child.stdout.take().expect("stdout");
        if read > 0 {
            let mut buf = vec![0; read];
            let _ = stdout.read_exact(&mut buf);
        }
        drop(stdout);
        let run = supervise(child, start);
        let _ = std::fs::remove_dir_all(&cache);
        if let Some(f) = no_panic(what, &run) {
            failures.push(f);
        } else if run.code != Some(0) || !run.stderr.trim().is_empty() {
            failures.push(format!("{what}: exit {:?}, stderr: {}", run.code, excerpt(&run.stderr)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Log lines on a stderr that is not a terminal carry no ANSI escape codes.
#[test]
fn no_ansi_codes_when_stderr_is_not_a_terminal() {
    let module = probe_dir().join("trap_stream.wat");
    let stream = probe_dir().join("stream.json");
    let run = wasmux(
        &["run".as_ref(), module.as_os_str(), "--scenario".as_ref(), stream.as_os_str()],
        &[("WASMUX_LOG", "warn")],
    );
    assert_eq!(no_panic("run trap_stream", &run), None);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(!run.stderr.trim().is_empty(), "the trap should be logged at WARN or above; nothing on stderr to check");
    assert!(!run.stderr.contains("\x1b["), "ANSI escape codes on a non-terminal stderr: {:?}", run.stderr);
}
