//! The test kit for filter authors: test files with expectations, run on every engine.
//!
//! A test file (YAML, or JSON) names the filter and lists tests. Each test is a
//! [scenario] (configuration, properties, time, events) with expectations:
//! on what an event did (`expect` on the event: the action, the stream's headers and bodies
//! right after it, the logs and callouts it caused) and on the whole run (`expect` on the test:
//! final stream states, local replies, logs, callouts, metrics, shared data, the tick period).
//!
//! ```yaml
//! module: ../target/wasm32-wasip1/release/my_filter.wasm   # relative to this file
//! native: ../target/release/libmy_filter.so                 # optional: the null engine's build
//! defaults:                                                 # optional: scenario fields of every test
//!   plugin_config: '{"header": "x-hello"}'
//! tests:
//!   - name: adds a header and strips another
//!     events:
//!       - {event: http_stream, stream: a}
//!       - event: request_headers
//!         stream: a
//!         headers: [[":path", "/"], [x-remove-me, "1"]]
//!         expect:
//!           action: continue
//!           request_headers: {has: {x-hello: world}, absent: [x-remove-me]}
//!       - event: request_body
//!         stream: a
//!         data: {file: big-body.json}
//!         chunk_size: 1024            # split into 1 KiB chunks; the last ends the stream
//!         end_of_stream: true
//!     expect:
//!       logs: [{level: info, regex: "^hello from"}]
//!       no_logs_at_or_above: error
//!       metrics: {requests_total: 1}
//! ```
//!
//! Run it with `wasmux test FILE_OR_DIR` on every engine compiled in, or from a cargo test:
//!
//! ```no_run
//! let report = wasmux::testing::TestFile::load("tests/filter.yaml")?.run_everywhere();
//! report.assert_passed(); // panics with the failures, expected against actual
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Matchers for bytes (header values, bodies, log messages, callout fields, shared data) are
//! text (exact), or one of `{exact: ..}`, `{hex: ..}`, `{regex: ..}` (matches anywhere: anchor
//! it for the whole value), `{contains: ..}`, `{file: path}` (the file's bytes, exactly) and
//! `{len: n}`. Headers take `has` (a map from name to matcher, or `~` for "present", or a
//! list of names), `absent` (names) and `exact` (the whole list of pairs, in order).
//!
//! `background_streams: N` on a test keeps N more streams in flight after its events (each
//! driven like its first stream, without `finish`) and reports the guest and host memory they
//! take ([`TestResult::memory`]).
//!
//! An event that fails (a trap, a failed VM) fails the test unless the event expects it
//! (`error: trap`, `error: unreachable`, `error: {kind: trap}`) or the test says
//! `allow_errors: true`; a start-up that fails does too unless the test expects `start`.

mod expect;
mod node;
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use marked_yaml::Node;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use serde_json::Value;

pub use expect::{Failure, subset};
pub use node::Pos;
pub use report::{MemoryUse, Outcome, Report, TestResult};

use crate::scenario::{self, Event, RunOptions, Scenario};
use crate::{ModuleCache, Runtime};
use expect::{Expect, Scope};
use node::{At, at, at_key, mapping, number, sequence, text};

/// A test file that cannot be used: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{pos}: {message}")]
pub struct TestFileError {
    /// The file.
    pub file: String,
    /// Line and column (0:0 when unknown).
    pub pos: Pos,
    /// What is wrong.
    pub message: String,
}

/// A test file: the filter and its tests.
#[derive(Debug, Clone)]
pub struct TestFile {
    path: PathBuf,
    module: Option<PathBuf>,
    native: Option<PathBuf>,
    module_bytes: Option<Vec<u8>>,
    tests: Vec<Test>,
}

/// One test of a file.
#[derive(Debug, Clone)]
pub struct Test {
    name: String,
    pos: Pos,
    scenario: Scenario,
    expect: Expect,
    /// Per scenario event (after chunking): how failures name it, and its expectations.
    events: Vec<EventInfo>,
    /// Streams kept in flight after the events, like the first one, to measure memory.
    background_streams: usize,
}

#[derive(Debug, Clone)]
struct EventInfo {
    label: String,
    stream: Option<String>,
    expect: Option<Expect>,
}

const FILE_KEYS: [&str; 5] = ["module", "native", "defaults", "tests", "comment"];
const TEST_KEYS: [&str; 4] = ["name", "expect", "comment", "background_streams"];
const EVENT_EXTRA_KEYS: [&str; 3] = ["expect", "chunk_size", "num_chunks"];
/// Event fields that hold bytes and may name a file instead (`{file: path}`).
const EVENT_BYTES: [&str; 5] = ["data", "body", "message", "item", "args"];

impl TestFile {
    /// Reads and checks a test file.
    ///
    /// # Errors
    /// The file cannot be read, or is not a valid test file: the error has its line and column.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TestFileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| TestFileError {
            file: path.display().to_string(),
            pos: Pos::default(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses a test file's text; `path` names it in errors and is the base of the relative
    /// paths it holds.
    ///
    /// # Errors
    /// As [`Self::load`].
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Self, TestFileError> {
        let path = path.as_ref();
        Self::parse_at(text, path).map_err(|e| TestFileError {
            file: path.display().to_string(),
            pos: e.pos,
            message: e.message,
        })
    }

    fn parse_at(text: &str, path: &Path) -> Result<Self, At> {
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let root = node::parse(text)?;
        let top = mapping(&root, "test file", &FILE_KEYS)?;
        let file_path = |key: &str| -> Result<Option<PathBuf>, At> {
            top.get_node(key).map(|n| text_of(n, key).map(|t| base.join(t))).transpose()
        };
        let module = file_path("module")?;
        let native = file_path("native")?;
        let defaults = top.get_node("defaults").map(|d| mapping(d, "defaults", &[])).transpose()?;
        let Some(tests_node) = top.get_node("tests") else {
            return Err(at(&root, "a test file needs `tests`, a list of tests"));
        };
        let mut tests = Vec::new();
        for (i, t) in sequence(tests_node, "tests")?.iter().enumerate() {
            let test = parse_test(t, i, defaults, &base)?;
            if let Some(other) = tests.iter().find(|o: &&Test| o.name == test.name) {
                return Err(at(t, format!("two tests are named `{}` (the other is at {})", test.name, other.pos)));
            }
            tests.push(test);
        }
        Ok(Self { path: path.to_path_buf(), module, native, module_bytes: None, tests })
    }

    /// Runs on this module instead of the file's `module` (for the engines that run wasm).
    #[must_use]
    pub fn with_module(mut self, bytes: Vec<u8>) -> Self {
        self.module_bytes = Some(bytes);
        self
    }

    /// Runs on this native library with the null engine instead of the file's `native`.
    #[must_use]
    pub fn with_native(mut self, library: impl Into<PathBuf>) -> Self {
        self.native = Some(library.into());
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tests, in file order.
    pub fn tests(&self) -> &[Test] {
        &self.tests
    }

    /// Runs every test on every engine compiled in.
    pub fn run_everywhere(&self) -> Report {
        self.run(Runtime::available(), &RunSettings::new())
    }

    /// Runs every test (or those `settings` selects) on each engine.
    pub fn run(&self, runtimes: &[Runtime], settings: &RunSettings) -> Report {
        let mut report = Report::default();
        for &runtime in runtimes {
            report.engines_push(runtime.name());
            let module = self.module_for(runtime);
            for test in &self.tests {
                if !settings.selects(&test.name) {
                    continue;
                }
                let outcome = match &module {
                    Err(missing) => {
                        report.push(TestResult::new(self, test, runtime, missing.clone()));
                        continue;
                    }
                    Ok(bytes) => test.run_once(runtime, bytes, self, settings),
                };
                let mut result = TestResult::new(self, test, runtime, outcome.0);
                result.record = outcome.1;
                result.time = outcome.2;
                if settings.bench_runs > 0 && result.outcome.passed() {
                    let bytes = module.as_ref().map(Vec::as_slice).unwrap_or_default();
                    result.bench = Some(test.bench(runtime, bytes, self, settings));
                }
                report.push(result);
            }
        }
        report
    }

    /// What the engine loads: the module's bytes, or the native library's path for null. A
    /// file without `native` skips the null engine; a module that cannot be read is an error.
    fn module_for(&self, runtime: Runtime) -> Result<Vec<u8>, Outcome> {
        if !runtime.runs_wasm() {
            let lib = self.native.as_ref().ok_or_else(|| {
                Outcome::Skipped("no native build: give `native` (a shared library) in the file".into())
            })?;
            if !lib.is_file() {
                return Err(Outcome::Error(format!("native build {} not found", lib.display())));
            }
            return Ok(lib.to_string_lossy().into_owned().into_bytes());
        }
        if let Some(b) = &self.module_bytes {
            return Ok(b.clone());
        }
        let path = self
            .module
            .as_ref()
            .ok_or_else(|| Outcome::Error("no module: give `module` (a .wasm file) in the file".into()))?;
        let bytes =
            std::fs::read(path).map_err(|e| Outcome::Error(format!("cannot read module {}: {e}", path.display())))?;
        if path.extension().is_some_and(|e| e == "wat") && !bytes.starts_with(b"\0asm") {
            return wat::parse_bytes(&bytes)
                .map(|b| b.into_owned())
                .map_err(|e| Outcome::Error(format!("{}: {e}", path.display())));
        }
        Ok(bytes)
    }
}

/// How to run tests.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RunSettings {
    /// Only tests whose name contains this text.
    pub filter: Option<String>,
    /// Compiled modules, shared by every test of an engine (none: compile for each test).
    pub cache: Option<std::sync::Arc<ModuleCache>>,
    /// Timed runs per passing test for [`TestResult::bench`] (0: no timing).
    pub bench_runs: usize,
    /// Start the plugins from snapshots ([`crate::PluginOptions::snapshot`]): the same
    /// expectations must hold; each record's `snapshots` says whether one was taken.
    pub snapshot: crate::SnapshotPolicy,
}

impl RunSettings {
    /// Settings with a module cache that keeps compiled modules: each module compiles once per
    /// engine, for every test of the run.
    pub fn new() -> Self {
        let cache = ModuleCache::in_memory().memory_capacity(0).keep_compiled();
        Self { cache: Some(std::sync::Arc::new(cache)), ..Self::default() }
    }

    /// Only tests whose name contains `filter`.
    #[must_use]
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = Some(filter.into());
        self
    }

    /// Also time each passing test: the median of `runs` runs.
    #[must_use]
    pub fn bench(mut self, runs: usize) -> Self {
        self.bench_runs = runs;
        self
    }

    /// Start the plugins from snapshots under `policy`.
    #[must_use]
    pub fn snapshot(mut self, policy: crate::SnapshotPolicy) -> Self {
        self.snapshot = policy;
        self
    }

    /// `base` with these settings' snapshot policy.
    fn options(&self, mut base: RunOptions) -> RunOptions {
        base.snapshot = self.snapshot;
        base
    }

    fn selects(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }
}

/// Timing of a test on one engine ([`RunSettings::bench`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bench {
    /// Timed runs.
    pub runs: usize,
    /// Median wall time of a whole run (load from the module cache, start, every event).
    pub median: Duration,
    /// Median wall time of the events alone (start-up excluded).
    pub events_median: Duration,
    /// HTTP and TCP streams the test creates.
    pub streams: usize,
}

impl Test {
    /// The test's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the test starts in its file.
    pub fn pos(&self) -> Pos {
        self.pos
    }

    /// The scenario the test runs.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    fn run_with(
        &self,
        runtime: Runtime,
        module: &[u8],
        file: &TestFile,
        cache: Option<&ModuleCache>,
        options: &RunOptions,
    ) -> Result<Value, String> {
        let base = file.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let loader = |name: &str| std::fs::read(base.join(name)).map_err(|e| format!("{name}: {e}"));
        let cache = cache.filter(|_| runtime.runs_wasm());
        scenario::run_with_options(runtime, module, &self.scenario, cache, Some(&loader), options)
            .map_err(|e| e.to_string())
    }

    fn run_once(
        &self,
        runtime: Runtime,
        module: &[u8],
        file: &TestFile,
        settings: &RunSettings,
    ) -> (Outcome, Option<Value>, Duration) {
        let start = Instant::now();
        let mut options = settings.options(RunOptions::traced());
        options.background_streams = self.background_streams;
        let record = self.run_with(runtime, module, file, settings.cache.as_deref(), &options);
        let time = start.elapsed();
        match record {
            Err(e) => (Outcome::Error(e), None, time),
            Ok(record) => {
                let failures = self.check(&record);
                let outcome = if failures.is_empty() { Outcome::Passed } else { Outcome::Failed(failures) };
                (outcome, Some(record), time)
            }
        }
    }

    fn bench(&self, runtime: Runtime, module: &[u8], file: &TestFile, settings: &RunSettings) -> Bench {
        let mut whole = Vec::with_capacity(settings.bench_runs);
        let mut events = Vec::with_capacity(settings.bench_runs);
        for _ in 0..settings.bench_runs {
            let start = Instant::now();
            let options = settings.options(RunOptions::timed());
            let Ok(record) = self.run_with(runtime, module, file, settings.cache.as_deref(), &options) else {
                break;
            };
            whole.push(start.elapsed());
            events.push(Duration::from_nanos(record.get("events_ns").and_then(Value::as_u64).unwrap_or(0)));
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or_default()
        };
        let streams = self
            .scenario
            .events
            .iter()
            .filter(|e| matches!(e, Event::HttpStream { .. } | Event::TcpStream { .. }))
            .count();
        Bench { runs: whole.len(), median: median(&mut whole), events_median: median(&mut events), streams }
    }

    /// Every expectation of the test that the record does not meet.
    fn check(&self, record: &Value) -> Vec<Failure> {
        let mut out = Vec::new();
        let run_scope = Scope { at: "end of test".into(), stream: None };
        let start = record.get("start").cloned().unwrap_or(Value::Null);
        if start != "ok" && !self.expect.expects_start() {
            out.push(run_scope.failure(
                "start-up".into(),
                "ok".into(),
                format!("{} (expect `start` if the test means it)", expect::json_short(Some(&start))),
            ));
        }
        let entries = record.get("events").and_then(Value::as_array).cloned().unwrap_or_default();
        for (entry, info) in entries.iter().zip(&self.events) {
            let scope = Scope { at: info.label.clone(), stream: info.stream.clone() };
            let failed = ["error", "trap", "delivery_error"].iter().find_map(|k| entry.get(*k));
            if let Some(err) = failed
                && !info.expect.as_ref().is_some_and(Expect::expects_error)
                && !self.expect.allows_errors()
            {
                out.push(scope.failure(
                    "error".into(),
                    "none (expect `error` on the event, or `allow_errors`, if the test means it)".into(),
                    expect::json_short(Some(err)),
                ));
            }
            if let Some(e) = &info.expect {
                e.check_event(record, entry, &scope, &mut out);
            }
        }
        self.expect.check_run(record, &run_scope, &mut out);
        if let Some(b) = record.get("background") {
            let completed = b.get("completed").and_then(Value::as_u64).unwrap_or(0);
            if completed < self.background_streams as u64 && !self.expect.allows_errors() {
                let scope = Scope { at: "background streams".into(), stream: None };
                out.push(scope.failure(
                    "streams in flight".into(),
                    format!("{} streams", self.background_streams),
                    format!("{completed}; the first to fail: {}", expect::json_short(b.get("first_error"))),
                ));
            }
        }
        out
    }
}

fn text_of(node: &Node, what: &str) -> Result<String, At> {
    text(node, what).map(str::to_string)
}

/// A mapping node without some keys.
fn without(map: &MarkedMappingNode, keys: &[&str]) -> MarkedMappingNode {
    let mut out = map.clone();
    out.retain(|k, _| !keys.contains(&k.as_str()));
    out
}

fn parse_test(node: &Node, index: usize, defaults: Option<&MarkedMappingNode>, base: &Path) -> Result<Test, At> {
    let what = format!("tests[{index}]");
    let raw = node.as_mapping().ok_or_else(|| at(node, format!("{what}: expected a mapping")))?;
    let name = match raw.get_node("name") {
        Some(n) => text_of(n, &format!("{what}.name"))?,
        None => return Err(at(node, format!("{what}: every test needs a `name`"))),
    };
    let what = format!("test `{name}`");
    // The file's defaults fill what the test leaves out.
    let mut map = raw.clone();
    if let Some(d) = defaults {
        for (k, v) in d.iter() {
            if !map.contains_key(k) {
                map.insert(k.clone(), v.clone());
            }
        }
    }
    let scenario_map = without(&map, &TEST_KEYS);
    let mut events = Vec::new();
    let mut infos = Vec::new();
    let mut streams: Vec<String> = Vec::new();
    let no_events = Node::Sequence(MarkedSequenceNode::new_empty(*node.span()));
    let events_node = scenario_map.get_node("events").unwrap_or(&no_events);
    let mut event_expects = Vec::new();
    for (i, ev) in sequence(events_node, &format!("{what}: events"))?.iter().enumerate() {
        let here = format!("{what}: events[{i}]");
        let m = ev.as_mapping().ok_or_else(|| at(ev, format!("{here}: expected a mapping")))?;
        let kind = m.get_node("event").map(|n| text_of(n, &format!("{here}.event"))).transpose()?.unwrap_or_default();
        let mut plain = without(m, &EVENT_EXTRA_KEYS);
        for key in EVENT_BYTES {
            inline_file(&mut plain, key, &here, base)?;
        }
        let event: Event = node::typed(&Node::Mapping(plain), &here)?;
        let stream = scenario::event_stream(&event).map(str::to_string);
        match &event {
            Event::HttpStream { stream, .. } | Event::TcpStream { stream, .. } => {
                if streams.contains(stream) {
                    return Err(at(ev, format!("{here}: stream `{stream}` is created twice")));
                }
                streams.push(stream.clone());
            }
            _ => {
                if let Some(s) = &stream
                    && !streams.contains(s)
                {
                    return Err(at(
                        ev,
                        format!(
                            "{here}: no stream named `{s}` was created before (created so far: {})",
                            names(&streams)
                        ),
                    ));
                }
            }
        }
        let label = match &stream {
            Some(s) => format!("event {} at line {} ({kind} on {s})", i + 1, Pos::of(ev).line),
            None => format!("event {} at line {} ({kind})", i + 1, Pos::of(ev).line),
        };
        let chunks = chunk_plan(m, &here)?;
        event_expects.push(m.get_node("expect").map(|e| (e, format!("{here}.expect"), stream.is_some())));
        let pieces = split(event, chunks, m, &here)?;
        let last = pieces.len() - 1;
        for (j, piece) in pieces.into_iter().enumerate() {
            events.push(piece);
            infos.push((label.clone(), stream.clone(), (j == last).then_some(i)));
        }
    }
    // Expectations are read once every stream is known: `logs` may name streams created later.
    let mut parsed = Vec::with_capacity(event_expects.len());
    for e in event_expects {
        parsed.push(match e {
            None => None,
            Some((n, here, has_stream)) => {
                let x = Expect::parse(n, &here, base, true, &streams)?;
                if !has_stream && x.needs_stream() {
                    return Err(at(n, format!("{here}: this event has no stream to expect headers or bodies of")));
                }
                Some(x)
            }
        });
    }
    let events_info = infos
        .into_iter()
        .map(|(label, stream, original)| EventInfo { label, stream, expect: original.and_then(|i| parsed[i].clone()) })
        .collect();
    let mut scenario: Scenario = node::typed(&Node::Mapping(without(&scenario_map, &["events"])), &what)?;
    scenario.events = events;
    let expect = match map.get_node("expect") {
        Some(n) => Expect::parse(n, &format!("{what}: expect"), base, false, &streams)?,
        None => Expect::default(),
    };
    let background_streams = match map.get_node("background_streams") {
        Some(n) => {
            let count = number(n, &format!("{what}: background_streams"))?;
            if !streams.is_empty() || count == 0 {
                usize::try_from(count).unwrap_or(usize::MAX)
            } else {
                return Err(at(n, format!("{what}: background_streams copy the test's first stream, and it has none")));
            }
        }
        None => 0,
    };
    Ok(Test { name, pos: Pos::of(node), scenario, expect, events: events_info, background_streams })
}

fn names(streams: &[String]) -> String {
    if streams.is_empty() { "none".into() } else { streams.join(", ") }
}

/// Replaces `{file: path}` in a bytes field with the file's content (as hex).
fn inline_file(map: &mut MarkedMappingNode, key: &str, what: &str, base: &Path) -> Result<(), At> {
    let Some(n) = map.get_node(key) else { return Ok(()) };
    let Some(m) = n.as_mapping() else { return Ok(()) };
    let Some(f) = m.get_node("file") else { return Ok(()) };
    let here = format!("{what}.{key}.file");
    let name = text(f, &here)?;
    if m.len() != 1 {
        return Err(at(n, format!("{what}.{key}: `file` stands alone")));
    }
    let path = base.join(name);
    let bytes = std::fs::read(&path).map_err(|e| at(f, format!("{here}: {}: {e}", path.display())))?;
    let hex = scenario::hex(&bytes);
    let span = *n.span();
    let mut inner = MarkedMappingNode::new_empty(span);
    let mut value = MarkedScalarNode::new(span, hex);
    value.set_coerce(false);
    inner.insert(MarkedScalarNode::new(span, "hex"), Node::Scalar(value));
    let key_node = map.keys().find(|k| k.as_str() == key).cloned();
    if let Some(k) = key_node {
        map.insert(k, Node::Mapping(inner));
    }
    Ok(())
}

/// An event's chunking plan: `chunk_size: n` or `num_chunks: n`.
enum Chunks {
    Whole,
    Size(usize),
    Count(usize),
}

fn chunk_plan(m: &MarkedMappingNode, what: &str) -> Result<Chunks, At> {
    match (m.get_node("chunk_size"), m.get_node("num_chunks")) {
        (Some(_), Some(n)) => Err(at(n, format!("{what}: give `chunk_size` or `num_chunks`, not both"))),
        (Some(n), None) => match number(n, &format!("{what}.chunk_size"))? {
            0 => Err(at(n, format!("{what}.chunk_size: must be at least 1"))),
            s => Ok(Chunks::Size(usize::try_from(s).unwrap_or(usize::MAX))),
        },
        (None, Some(n)) => match number(n, &format!("{what}.num_chunks"))? {
            0 => Err(at(n, format!("{what}.num_chunks: must be at least 1"))),
            c => Ok(Chunks::Count(usize::try_from(c).unwrap_or(usize::MAX))),
        },
        (None, None) => Ok(Chunks::Whole),
    }
}

/// Splits a body or data event by its chunking plan; only the last piece keeps
/// `end_of_stream`.
fn split(event: Event, chunks: Chunks, m: &MarkedMappingNode, what: &str) -> Result<Vec<Event>, At> {
    if matches!(chunks, Chunks::Whole) {
        return Ok(vec![event]);
    }
    let mut template = event;
    let Some((data, eos)) = template.chunk_mut() else {
        let key = m.keys().find(|k| k.as_str() == "chunk_size" || k.as_str() == "num_chunks");
        let msg = format!("{what}: only request_body, response_body, downstream_data and upstream_data can be chunked");
        return Err(match key {
            Some(k) => at_key(k, msg),
            None => At { pos: Pos::of_span(m.span()), message: msg },
        });
    };
    let eos = *eos;
    let bytes = std::mem::take(data)
        .to_vec()
        .map_err(|e| At { pos: Pos::of_span(m.span()), message: format!("{what}.data: {e}") })?;
    let size = match chunks {
        Chunks::Size(s) => s,
        Chunks::Count(c) => bytes.len().div_ceil(c).max(1),
        Chunks::Whole => bytes.len().max(1),
    };
    let pieces: Vec<&[u8]> = if bytes.is_empty() { vec![&[][..]] } else { bytes.chunks(size).collect() };
    let last = pieces.len() - 1;
    Ok(pieces
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let mut piece = template.clone();
            if let Some((data, end)) = piece.chunk_mut() {
                *data = scenario::Bytes::from_slice(p);
                *end = eos && i == last;
            }
            piece
        })
        .collect())
}

/// Test files under a directory: `*.yaml`, `*.yml` and `*.json` files (recursively, in name
/// order) whose top level has `tests`. Files given by name are taken as test files whatever
/// they hold.
///
/// # Errors
/// A directory that cannot be read.
pub fn discover(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json") && looks_like_tests(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Whether a file's top level is a mapping with `tests` (a scenario or a config is not).
fn looks_like_tests(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else { return false };
    node::parse(&text).ok().and_then(|n| n.as_mapping().map(|m| m.get_node("tests").is_some())).unwrap_or(false)
}

#[cfg(test)]
mod tests;
