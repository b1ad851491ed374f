//! The `wasmux` command through its binary (the crate's one test binary): the hostile suite
//! ([`hostile`]) and the compiled-module cache of `wasmux run`.

#[path = "hostile.rs"]
mod hostile;

use std::path::{Path, PathBuf};
use std::process::Command;

fn wasmux() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wasmux"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Files under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `wasmux run` keeps compiled modules in the per-user cache (here `WASMUX_CACHE_DIR`) and
/// loads them from there on the next run, with the same record; `--no-cache` leaves the cache
/// alone.
#[test]
fn run_uses_the_module_cache_unless_told_not_to() {
    let dir = std::env::temp_dir().join(format!("wasmux-cli-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let module = repo().join("conformance/fixtures/wasm/headers.wasip1.wasm");
    let scenario = repo().join("examples/headers.json");
    let run = |extra: &[&str]| {
        let out = wasmux()
            .args(["run"])
            .arg(&module)
            .args(["--engine", "wasmtime", "--scenario"])
            .arg(&scenario)
            .args(extra)
            .env("WASMUX_CACHE_DIR", &dir)
            .output()
            .expect("wasmux runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8 record")
    };
    let uncached = run(&["--no-cache"]);
    assert!(files(&dir).is_empty(), "--no-cache wrote {:?}", files(&dir));
    let cold = run(&[]);
    let artifacts = files(&dir);
    assert_eq!(artifacts.len(), 1, "one artifact for one module on one engine: {artifacts:?}");
    let stamp = std::fs::metadata(&artifacts[0]).and_then(|m| m.modified()).expect("artifact time");
    let warm = run(&[]);
    assert_eq!(
        std::fs::metadata(&artifacts[0]).and_then(|m| m.modified()).expect("artifact time"),
        stamp,
        "a warm run reads the artifact, it does not rewrite it"
    );
    assert_eq!(cold, uncached);
    assert_eq!(warm, cold);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The engines this binary has (`wasmux engines`).
fn engines() -> Vec<String> {
    let out = wasmux().arg("engines").output().expect("wasmux runs");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// `wasmux test` runs the kit's test files (bodies with chunking plans and files, an HTTP
/// callout, shared data, queues, metrics, ticks, local replies) on every engine compiled in,
/// the null engine on the fixtures' native builds, with the same outcome: all pass. The JUnit
/// file lists every test on every engine.
#[test]
fn test_kit_files_pass_on_every_engine() {
    let junit = std::env::temp_dir().join(format!("wasmux-kit-{}.xml", std::process::id()));
    let out = wasmux()
        .arg("test")
        .arg(repo().join("crates/cli/tests/kit"))
        .arg(repo().join("examples/tests"))
        .arg("--junit")
        .arg(&junit)
        .output()
        .expect("wasmux runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let engines = engines();
    let tests = 7;
    let summary =
        format!("{} passed, 0 failed, 0 skipped ({tests} tests x {} engines)", tests * engines.len(), engines.len());
    assert!(stdout.contains(&summary), "expected `{summary}` in:\n{stdout}");
    let header = stdout.lines().next().unwrap_or_default();
    for e in &engines {
        assert!(header.split_whitespace().any(|w| w == e), "engine {e} missing from the matrix header: {header}");
    }
    // Background streams: 1000 requests in flight on every engine, with their memory.
    assert_eq!(stdout.matches("1000/1000 streams: guest").count(), engines.len(), "{stdout}");
    let xml = std::fs::read_to_string(&junit).expect("junit written");
    let _ = std::fs::remove_file(&junit);
    assert_eq!(xml.matches("<testcase ").count(), tests * engines.len(), "{xml}");
    assert!(!xml.contains("<failure"), "{xml}");
}

/// With `--snapshot`, the same expectations hold on every engine and the output says, per engine,
/// that the headers fixture's VMs started from a snapshot (the null engine runs native code: no
/// snapshot, it says why).
#[test]
fn test_kit_runs_with_snapshots() {
    let out = wasmux()
        .arg("test")
        .arg(repo().join("examples/tests/headers.yaml"))
        .args(["--snapshot", "when_safe"])
        .output()
        .expect("wasmux runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("snapshots (when_safe):"), "{stdout}");
    for e in engines().iter().filter(|e| *e != "null") {
        assert!(stdout.contains(&format!("{e}: snapshot taken (")), "{e}: {stdout}");
    }
    let bad = wasmux().arg("test").arg(repo().join("examples/tests")).args(["--snapshot", "always"]).output();
    let bad = bad.expect("wasmux runs");
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// Expectations a filter does not meet fail the run (exit 1), each shown expected against
/// actual with the log lines of its stream, on every engine; an unexpected trap fails a test,
/// an expected one does not. JUnit carries the failures.
#[test]
fn test_kit_reports_each_unmet_expectation() {
    let junit = std::env::temp_dir().join(format!("wasmux-kit-failing-{}.xml", std::process::id()));
    let out = wasmux()
        .arg("test")
        .arg(repo().join("crates/cli/tests/kit-failing/headers.yaml"))
        .arg("--junit")
        .arg(&junit)
        .output()
        .expect("wasmux runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let all = engines();
    // The file has no native build: the null engine skips it.
    let skipped = if all.iter().any(|e| e == "null") { 3 } else { 0 };
    let engines = all.len() - skipped / 3;
    let summary =
        format!("{engines} passed, {} failed, {skipped} skipped (3 tests x {} engines)", 2 * engines, all.len());
    assert!(stdout.contains(&summary), "expected `{summary}` in:\n{stdout}");
    for needle in [
        "(request_headers on a): action\n    expected: pause\n    actual:   continue",
        "request_headers: header `x-wasmux-request`\n    expected: matching /^nope$/\n    actual:   \"seen\"",
        "request_headers: header `x-wasmux-request`\n    expected: absent\n    actual:   \"seen\"",
        "at stream a: local_reply\n    expected: a local reply\n    actual:   none",
        "logs\n    expected: a log line at info \"never logged\"",
        "no log at error or above\n    expected: none\n    actual:   [error] root: level error",
        "metric `no_such_metric`\n    expected: 1\n    actual:   no such metric",
        "callouts\n    expected: 1 callouts\n    actual:   0: []",
        "[info] a: request path: /hello",
        "test `an unexpected trap`",
    ] {
        let found = stdout.matches(needle).count();
        assert_eq!(found, engines, "`{needle}` once per engine ({engines}) in:\n{stdout}");
    }
    let xml = std::fs::read_to_string(&junit).expect("junit written");
    let _ = std::fs::remove_file(&junit);
    assert_eq!(xml.matches("<failure ").count(), 2 * engines, "{xml}");
}

/// A test file with a mistake is refused before anything runs (exit 2), with its line and
/// column: YAML syntax, an unknown field, an event on an unknown stream, an expectation on a
/// stream the test never creates, a regex that does not compile.
#[test]
fn test_kit_refuses_bad_files_with_line_and_column() {
    let dir = std::env::temp_dir().join(format!("wasmux-kit-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let head = "module: m.wasm\ntests:\n  - name: t\n    events:\n      - {event: http_stream, stream: a}\n";
    let cases = [
        ("syntax.yaml", format!("{head}      - [\n"), ":7:1: invalid YAML or JSON"),
        (
            "field.yaml",
            format!("{head}      - {{event: request_headers, stream: a, headerz: []}}\n"),
            ":6:45: test `t`: events[1]: unknown field `headerz`",
        ),
        (
            "stream.yaml",
            format!("{head}      - {{event: finish, stream: b}}\n"),
            ":6:9: test `t`: events[1]: no stream named `b`",
        ),
        (
            "expect.yaml",
            format!("{head}    expect: {{streams: {{b: {{finished: done}}}}}}\n"),
            ":6:24: test `t`: expect.streams.b: the test creates no stream named `b`",
        ),
        (
            "regex.yaml",
            format!("{head}    expect: {{logs: [{{regex: \"a(b\"}}]}}\n"),
            ":6:29: test `t`: expect.logs[0].regex: the regex `a(b` does not compile",
        ),
        (
            "event.yaml",
            format!("{head}      - {{event: explode, stream: a}}\n"),
            ":6:9: test `t`: events[1]: unknown variant `explode`",
        ),
    ];
    for (name, text, want) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        let out = wasmux().arg("test").arg(&path).output().expect("wasmux runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(&format!("{name}{want}")), "{name}: expected `{want}` in: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--trace` prints every host call of the tests run (on stderr); `--bench` adds the median
/// time of each test per engine.
#[test]
fn test_kit_traces_and_times() {
    let out = wasmux()
        .arg("test")
        .arg(repo().join("examples/tests/headers.yaml"))
        .args(["--engine", "wasmtime", "--filter", "denies", "--trace", "--bench", "3"])
        .env_remove("WASMUX_LOG")
        .output()
        .expect("wasmux runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed, 0 failed"), "{stdout}");
    assert!(stderr.contains("proxy_send_local_response"), "no host-call trace: {stderr}");
    assert!(stdout.contains("µs"), "no timing: {stdout}");
}
