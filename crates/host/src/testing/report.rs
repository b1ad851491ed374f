//! Results of test runs: the engine matrix, readable failures and JUnit XML.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::expect::{Failure, show_log};
use super::{Bench, Pos, Test, TestFile};
use crate::Runtime;

/// How a test ended on one engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every expectation held.
    Passed,
    /// These expectations did not hold.
    Failed(Vec<Failure>),
    /// The test could not run (a module that does not load, a scenario the runner refuses).
    Error(String),
    /// Not run on this engine, and why (the null engine without a native build).
    Skipped(String),
}

impl Outcome {
    /// Whether the test passed.
    pub fn passed(&self) -> bool {
        matches!(self, Self::Passed)
    }

    /// Whether it counts against the run (failed or could not run).
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failed(_) | Self::Error(_))
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Passed => "ok",
            Self::Failed(_) => "FAIL",
            Self::Error(_) => "ERROR",
            Self::Skipped(_) => "skip",
        }
    }
}

/// One test on one engine.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// The test file.
    pub file: PathBuf,
    /// The test's name.
    pub test: String,
    /// Where the test is in its file.
    pub pos: Pos,
    /// The engine.
    pub engine: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall time of the run (load, start, events, checks).
    pub time: Duration,
    /// The run's record (see [`crate::scenario`]), when it ran.
    pub record: Option<Value>,
    /// Timing, when asked for ([`super::RunSettings::bench`]).
    pub bench: Option<Bench>,
}

/// What a test's background streams cost (`background_streams: N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// Streams opened.
    pub streams: u64,
    /// Streams that got through every event without an error.
    pub completed: u64,
    /// Guest linear memory (every VM of the test) before them, in bytes.
    pub guest_before: u64,
    /// Guest linear memory with them in flight.
    pub guest_after: u64,
    /// Growth of the host's resident set while they were opened, in bytes (Linux).
    pub host_rss_growth: Option<u64>,
}

impl TestResult {
    /// The background streams' memory, when the test has some.
    pub fn memory(&self) -> Option<MemoryUse> {
        let b = self.record.as_ref()?.get("background")?;
        let n = |k: &str| b.get(k).and_then(Value::as_u64);
        Some(MemoryUse {
            streams: n("streams")?,
            completed: n("completed")?,
            guest_before: n("guest_memory_before")?,
            guest_after: n("guest_memory_after")?,
            host_rss_growth: n("host_rss_after").zip(n("host_rss_before")).map(|(a, b)| a.saturating_sub(b)),
        })
    }
}

impl TestResult {
    pub(crate) fn new(file: &TestFile, test: &Test, runtime: Runtime, outcome: Outcome) -> Self {
        Self {
            file: file.path.clone(),
            test: test.name.clone(),
            pos: test.pos,
            engine: runtime.name().to_string(),
            outcome,
            time: Duration::ZERO,
            record: None,
            bench: None,
        }
    }

    /// The failures of this result as text: each expectation, expected against actual, with
    /// the log lines of the stream concerned.
    pub fn explain(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}:{}: test `{}` on {}", self.file.display(), self.pos.line, self.test, self.engine);
        match &self.outcome {
            Outcome::Passed => {
                let _ = writeln!(s, "  passed");
            }
            Outcome::Skipped(why) => {
                let _ = writeln!(s, "  skipped: {why}");
            }
            Outcome::Error(e) => {
                let _ = writeln!(s, "  could not run: {e}");
            }
            Outcome::Failed(failures) => {
                for f in failures {
                    let _ = writeln!(s, "  at {}: {}", f.at, f.what);
                    let _ = writeln!(s, "    expected: {}", f.expected);
                    let _ = writeln!(s, "    actual:   {}", f.actual);
                }
                // The log lines that explain it: the streams concerned, or every line.
                let mut streams: Vec<&str> = failures.iter().filter_map(|f| f.stream.as_deref()).collect();
                streams.dedup();
                let logs = self.record.as_ref().and_then(|r| r.get("logs")).and_then(Value::as_array);
                if let Some(logs) = logs {
                    let relevant: Vec<&Value> = logs
                        .iter()
                        .filter(|l| {
                            let ctx = l.get("context").and_then(Value::as_str).unwrap_or_default();
                            streams.is_empty()
                                || streams.contains(&ctx)
                                || ctx.starts_with("root")
                                || ctx.starts_with("vm")
                        })
                        .collect();
                    if !relevant.is_empty() {
                        const MAX: usize = 30;
                        let _ = writeln!(
                            s,
                            "  log lines{}:",
                            if streams.is_empty() { "" } else { " (root and the streams concerned)" }
                        );
                        let skip = relevant.len().saturating_sub(MAX);
                        if skip > 0 {
                            let _ = writeln!(s, "    ... {skip} earlier lines");
                        }
                        for l in &relevant[skip..] {
                            let _ = writeln!(s, "    {}", show_log(l));
                        }
                    }
                }
            }
        }
        s
    }
}

/// The results of a run: tests × engines.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every result, in run order.
    pub results: Vec<TestResult>,
    engines: Vec<String>,
}

impl Report {
    /// For runs with snapshots ([`RunSettings::snapshot`](super::RunSettings)): per engine, each
    /// snapshot status the VMs of its tests had, with how many VMs had it, one line each.
    pub fn snapshot_summary(&self) -> String {
        let mut seen: Vec<(&str, String, usize)> = Vec::new();
        for r in &self.results {
            let statuses = r.record.as_ref().and_then(|v| v.get("snapshots")).and_then(|v| v.as_array());
            for status in statuses.into_iter().flatten().filter_map(|v| v.as_str()) {
                match seen.iter_mut().find(|(e, s, _)| *e == r.engine && s == status) {
                    Some(entry) => entry.2 += 1,
                    None => seen.push((&r.engine, status.to_string(), 1)),
                }
            }
        }
        seen.iter().map(|(engine, status, n)| format!("{engine}: snapshot {status} ({n} VMs)\n")).collect()
    }

    pub(crate) fn engines_push(&mut self, engine: &str) {
        if !self.engines.iter().any(|e| e == engine) {
            self.engines.push(engine.to_string());
        }
    }

    pub(crate) fn push(&mut self, r: TestResult) {
        self.engines_push(&r.engine);
        self.results.push(r);
    }

    /// Adds another report's results.
    pub fn extend(&mut self, other: Self) {
        for e in &other.engines {
            self.engines_push(e);
        }
        self.results.extend(other.results);
    }

    /// Whether no test failed or errored (skipped tests do not count).
    pub fn passed(&self) -> bool {
        !self.results.iter().any(|r| r.outcome.is_failure())
    }

    /// Counts: (passed, failed or errored, skipped).
    pub fn counts(&self) -> (usize, usize, usize) {
        let n = |f: fn(&Outcome) -> bool| self.results.iter().filter(|r| f(&r.outcome)).count();
        (n(Outcome::passed), n(Outcome::is_failure), n(|o| matches!(o, Outcome::Skipped(_))))
    }

    /// Tests in first-run order, as (file, test, position).
    fn rows(&self, keep: &impl Fn(&TestResult) -> bool) -> Vec<(PathBuf, String, Pos)> {
        let mut rows: Vec<(PathBuf, String, Pos)> = Vec::new();
        for r in self.results.iter().filter(|r| keep(r)) {
            if !rows.iter().any(|(f, t, _)| *f == r.file && *t == r.test) {
                rows.push((r.file.clone(), r.test.clone(), r.pos));
            }
        }
        rows
    }

    fn cell(&self, file: &PathBuf, test: &str, engine: &str) -> Option<&TestResult> {
        self.results.iter().find(|r| r.file == *file && r.test == test && r.engine == engine)
    }

    /// The test × engine matrix (`ok`, `FAIL`, `ERROR`, `skip`), with a summary line.
    pub fn matrix(&self) -> String {
        let (passed, failed, skipped) = self.counts();
        let mut s = self.table(|_| true, |r| r.outcome.label().to_string());
        let _ = writeln!(
            s,
            "\n{passed} passed, {failed} failed, {skipped} skipped ({} tests x {} engines)",
            self.rows(&|_| true).len(),
            self.engines.len()
        );
        s
    }

    /// The test × engine matrix of median times ([`super::RunSettings::bench`]): the events'
    /// time, and per stream when the test has streams.
    pub fn bench_matrix(&self) -> String {
        self.table(
            |_| true,
            |r| match r.bench {
                Some(b) if b.streams > 0 => {
                    let streams = u32::try_from(b.streams).unwrap_or(u32::MAX);
                    format!("{} ({}/stream)", micros(b.events_median), micros(b.events_median / streams))
                }
                Some(b) => micros(b.events_median),
                None => r.outcome.label().to_string(),
            },
        )
    }

    /// The test x engine table of `cell`, for the tests with a result `keep` takes.
    fn table(&self, keep: impl Fn(&TestResult) -> bool, cell: impl Fn(&TestResult) -> String) -> String {
        let rows = self.rows(&keep);
        let multi_file = rows.iter().any(|(f, _, _)| *f != rows[0].0);
        let name = |(f, t, _): &(PathBuf, String, Pos)| {
            if multi_file {
                format!("{} :: {t}", f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
            } else {
                t.clone()
            }
        };
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|row| {
                self.engines
                    .iter()
                    .map(|e| self.cell(&row.0, &row.1, e).map_or_else(|| "-".to_string(), &cell))
                    .collect()
            })
            .collect();
        let first = rows.iter().map(|r| name(r).chars().count()).max().unwrap_or(4).max(4);
        let widths: Vec<usize> = self
            .engines
            .iter()
            .enumerate()
            .map(|(i, e)| cells.iter().map(|c| c[i].chars().count()).chain([e.len()]).max().unwrap_or(0))
            .collect();
        let mut s = String::new();
        let _ = write!(s, "{:first$}", "test");
        for (e, w) in self.engines.iter().zip(&widths) {
            let _ = write!(s, "  {e:w$}");
        }
        s.push('\n');
        for (row, c) in rows.iter().zip(&cells) {
            let _ = write!(s, "{:first$}", name(row));
            for (v, w) in c.iter().zip(&widths) {
                let _ = write!(s, "  {v:w$}");
            }
            s.push('\n');
        }
        s
    }

    /// The memory of background streams per test and engine (empty when no test has them):
    /// guest memory with the streams in flight, its growth per stream, and the host's.
    pub fn memory_matrix(&self) -> String {
        let has_memory = |r: &TestResult| r.memory().is_some();
        if !self.results.iter().any(has_memory) {
            return String::new();
        }
        self.table(has_memory, |r| match r.memory() {
            Some(m) => {
                let per = m.guest_after.saturating_sub(m.guest_before) / m.streams.max(1);
                let host = m.host_rss_growth.map_or_else(String::new, |h| format!(", host +{} KiB", h / 1024));
                format!(
                    "{}/{} streams: guest {:.1} MiB (+{per} B/stream){host}",
                    m.completed,
                    m.streams,
                    m.guest_after as f64 / f64::from(1 << 20)
                )
            }
            None => "-".to_string(),
        })
    }

    /// Every failed, errored (and, with `skipped`, skipped) result explained.
    pub fn failures(&self, skipped: bool) -> String {
        self.results
            .iter()
            .filter(|r| r.outcome.is_failure() || (skipped && matches!(r.outcome, Outcome::Skipped(_))))
            .map(TestResult::explain)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Panics with the matrix and every failure explained unless every test passed: for cargo
    /// tests.
    ///
    /// # Panics
    /// When a test failed or could not run.
    #[track_caller]
    pub fn assert_passed(&self) {
        assert!(self.passed(), "filter tests failed\n\n{}\n{}", self.matrix(), self.failures(false));
    }

    /// The results as JUnit XML: a test suite per file, a test case per test and engine.
    pub fn junit(&self) -> String {
        let mut files: Vec<&PathBuf> = Vec::new();
        for r in &self.results {
            if !files.contains(&&r.file) {
                files.push(&r.file);
            }
        }
        let (_, failed, skipped) = self.counts();
        let total: Duration = self.results.iter().map(|r| r.time).sum();
        let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            s,
            "<testsuites name=\"wasmux\" tests=\"{}\" failures=\"{failed}\" skipped=\"{skipped}\" time=\"{:.6}\">",
            self.results.len(),
            total.as_secs_f64()
        );
        for file in files {
            let results: Vec<&TestResult> = self.results.iter().filter(|r| r.file == *file).collect();
            let fails = results.iter().filter(|r| matches!(r.outcome, Outcome::Failed(_))).count();
            let errors = results.iter().filter(|r| matches!(r.outcome, Outcome::Error(_))).count();
            let skips = results.iter().filter(|r| matches!(r.outcome, Outcome::Skipped(_))).count();
            let time: Duration = results.iter().map(|r| r.time).sum();
            let _ = writeln!(
                s,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{fails}\" errors=\"{errors}\" skipped=\"{skips}\" time=\"{:.6}\">",
                xml(&file.display().to_string()),
                results.len(),
                time.as_secs_f64()
            );
            for r in results {
                let _ = write!(
                    s,
                    "    <testcase classname=\"{}\" name=\"{} [{}]\" file=\"{}\" line=\"{}\" time=\"{:.6}\"",
                    xml(&file.display().to_string()),
                    xml(&r.test),
                    xml(&r.engine),
                    xml(&file.display().to_string()),
                    r.pos.line,
                    r.time.as_secs_f64()
                );
                match &r.outcome {
                    Outcome::Passed => s.push_str("/>\n"),
                    Outcome::Skipped(why) => {
                        let _ = writeln!(s, ">\n      <skipped message=\"{}\"/>\n    </testcase>", xml(why));
                    }
                    Outcome::Error(e) => {
                        let _ = writeln!(s, ">\n      <error message=\"{}\"/>\n    </testcase>", xml(e));
                    }
                    Outcome::Failed(f) => {
                        let first = f.first().map(|f| format!("{}: {}", f.at, f.what)).unwrap_or_default();
                        let _ = writeln!(
                            s,
                            ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                            xml(&first),
                            xml(&r.explain())
                        );
                    }
                }
            }
            s.push_str("  </testsuite>\n");
        }
        s.push_str("</testsuites>\n");
        s
    }
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// Text escaped for XML attributes and content; characters XML 1.0 cannot hold are dropped.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' | '\t' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}
