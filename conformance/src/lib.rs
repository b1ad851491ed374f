//! The wasmux conformance suite.
//!
//! A case is one JSON file in `conformance/cases/<case>.json`:
//!
//! ```json
//! {
//!   "module": "headers.wasip1.wasm",
//!   "scenario": { "events": [ ... ] },
//!   "expect": { "logs": [ ... ], "streams": { "a": { ... } } },
//!   "gaps": { "wasmtime": "why this engine cannot pass yet" }
//! }
//! ```
//!
//! - `module` (or `modules`, a list, to run the same scenario and expectation on several
//!   modules) names the guest:
//!   - `name.wasm`: a built fixture, relative to `conformance/fixtures/wasm/`;
//!   - `wat:name.wat`: a hand-written micro-module, relative to `conformance/wat/`, assembled
//!     with the `wat` crate when the case runs;
//!   - `bytes:hex:0061736d...`: raw bytes given inline (for malformed modules);
//!   - `go:name.wasm`: a filter built by the upstream Go compiler, relative to
//!     `conformance/fixtures/go/` (`scripts/build-go-fixtures.sh`).
//! - `scenario` is a [`wasmux::scenario::Scenario`] object.
//! - `expect` is compared as a *subset* of the record produced by [`wasmux::scenario::run`]:
//!   every key present in `expect` must be present in the record with an equal value; objects
//!   are compared recursively by the keys of the expectation, arrays exactly (same length,
//!   element by element, with the same subset rule for object elements). `engine` is never
//!   expected. The special key `load_error` (a string or a list of strings) says that loading
//!   must fail: `scenario::run` must return an error whose text contains every substring.
//! - `gaps` declares known failures per engine name (`"*"`: every engine) with the reason.
//!   A gap trial passes only if the case *fails*; a declared gap that passes fails the run,
//!   so the list can only shrink.
//!
//! Trials are named `<engine>/<case>`, or `<engine>/<case>@<variant>` for cases with several
//! modules (the variant is `wasip1` / `unknown` for fixtures, the file stem for WAT modules).
//! Every `proxy_*` host function of every ABI version must be exercised by at least one case
//! whose module declares that version (the record's `coverage` and `abi_version` keys).
//!
//! # The null engine
//!
//! An engine that does not run wasm (`null`) runs the same fixture sources built natively by
//! `scripts/build-native-fixtures.sh`: a module `<name>.wasip1.wasm` stands for
//! `fixtures/target/<host-triple>/release/libfixture_<name>.so`. Whole categories of trials do
//! not apply to it, each with its reason ([`not_applicable`]); they are left out of the plan.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasmux::abi::{AbiVersion, proxy_funcs};
use wasmux::scenario::{self, Scenario};
use wasmux::{Runtime, SnapshotPolicy};

/// The suite's root directory (`conformance/` in the source tree).
pub fn root_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The default directory of case files.
pub fn cases_dir() -> PathBuf {
    root_dir().join("cases")
}

/// One case file.
#[derive(Debug, Clone)]
pub struct Case {
    /// File stem.
    pub name: String,
    /// Module specs (`x.wasm`, `wat:x.wat`, `bytes:hex:...`).
    pub modules: Vec<String>,
    /// The scenario.
    pub scenario: Scenario,
    /// Expected subset of the record.
    pub expect: Value,
    /// Declared gaps: engine name (or `*`) → reason.
    pub gaps: BTreeMap<String, String>,
}

impl Case {
    /// Parses a case file's text.
    ///
    /// # Errors
    /// Invalid JSON, unknown keys, no module, an invalid scenario.
    pub fn parse(name: &str, text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("{name}: {e}"))?;
        let Value::Object(o) = v else { return Err(format!("{name}: a case is a JSON object")) };
        for k in o.keys() {
            if !["module", "modules", "scenario", "expect", "gaps", "comment"].contains(&k.as_str()) {
                return Err(format!("{name}: unknown key `{k}`"));
            }
        }
        let mut modules = Vec::new();
        if let Some(m) = o.get("module") {
            modules.push(m.as_str().ok_or_else(|| format!("{name}: `module` must be a string"))?.to_string());
        }
        if let Some(ms) = o.get("modules") {
            let arr = ms.as_array().ok_or_else(|| format!("{name}: `modules` must be a list"))?;
            for m in arr {
                modules.push(m.as_str().ok_or_else(|| format!("{name}: `modules` must hold strings"))?.to_string());
            }
        }
        if modules.is_empty() {
            return Err(format!("{name}: no `module`"));
        }
        let scenario: Scenario = serde_json::from_value(o.get("scenario").cloned().unwrap_or_else(|| json!({})))
            .map_err(|e| format!("{name}: invalid scenario: {e}"))?;
        let expect = o.get("expect").cloned().unwrap_or_else(|| json!({}));
        if !expect.is_object() {
            return Err(format!("{name}: `expect` must be an object"));
        }
        if expect.get("engine").is_some() {
            return Err(format!("{name}: `engine` must not be expected"));
        }
        let gaps = match o.get("gaps") {
            None => BTreeMap::new(),
            Some(g) => serde_json::from_value(g.clone()).map_err(|e| format!("{name}: invalid `gaps`: {e}"))?,
        };
        Ok(Self { name: name.to_string(), modules, scenario, expect, gaps })
    }

    /// The declared gap for an engine, if any.
    pub fn gap(&self, engine: &str) -> Option<&str> {
        self.gaps.get(engine).or_else(|| self.gaps.get("*")).map(String::as_str)
    }

    /// The variant label of a module (empty when the case has a single module).
    pub fn variant(&self, module: &str) -> Option<String> {
        (self.modules.len() > 1).then(|| module_variant(module))
    }
}

/// A short label for a module spec: `wasip1`/`unknown` for fixtures, the stem for WAT files.
pub fn module_variant(spec: &str) -> String {
    if let Some(w) = spec.strip_prefix("wat:") {
        return w.trim_end_matches(".wat").to_string();
    }
    if spec.starts_with("bytes:") {
        return "bytes".into();
    }
    if let Some(go) = spec.strip_prefix("go:") {
        return go.trim_end_matches(".wasm").to_string();
    }
    let stem = spec.trim_end_matches(".wasm");
    stem.rsplit('.').next().unwrap_or(stem).to_string()
}

/// Loads every `*.json` case of a directory, sorted by name.
///
/// # Errors
/// An unreadable directory or any invalid case (all problems are listed).
pub fn load_cases(dir: &Path) -> Result<Vec<Case>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        match std::fs::read_to_string(&p)
            .map_err(|e| format!("{}: {e}", p.display()))
            .and_then(|t| Case::parse(&name, &t))
        {
            Ok(c) => cases.push(c),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(cases) } else { Err(errors.join("\n")) }
}

/// The bytes of a module spec.
///
/// # Errors
/// An unreadable file, invalid WAT or invalid hex.
pub fn load_module(spec: &str) -> Result<Vec<u8>, String> {
    if let Some(hex) = spec.strip_prefix("bytes:hex:") {
        return scenario::Bytes::Hex { hex: hex.to_string() }.to_vec();
    }
    if let Some(w) = spec.strip_prefix("wat:") {
        let path = root_dir().join("wat").join(w);
        return wat::parse_file(&path).map_err(|e| format!("{}: {e}", path.display()));
    }
    let path = match spec.strip_prefix("go:") {
        Some(go) => root_dir().join("fixtures").join("go").join(go),
        None => root_dir().join("fixtures").join("wasm").join(spec),
    };
    std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Why a trial cannot run on an engine, by category, or `None` when it applies. Only engines
/// that do not run wasm (`null`) have such categories:
///
/// - hand-written modules (`wat:`, `bytes:`), which have no native build; this includes every
///   sandbox case (deadline, memory growth, stack overflow): null has no sandbox and no limits;
/// - the `unknown` build of a fixture: a fixture has one native build, run under its `wasip1`
///   label;
/// - cases that expect a guest trap (an error of kind `trap` or `failed`, or a stream answered
///   by the failure policy, details `wasm_fail_stream`): a panic in a native filter aborts the
///   process, there is no sandbox to contain it.
pub fn not_applicable(case: &Case, module: &str, runtime: Runtime) -> Option<&'static str> {
    if runtime.runs_wasm() {
        return None;
    }
    if module.starts_with("wat:") || module.starts_with("bytes:") {
        return Some("hand-written wasm has no native build (sandbox and limit cases are out of scope: no sandbox)");
    }
    if module.starts_with("go:") {
        return Some("a Go-built module has no native build");
    }
    if !module.ends_with(".wasip1.wasm") {
        return Some("one native build per fixture, run under the wasip1 label");
    }
    if expects_trap(&case.expect) {
        return Some("a guest trap aborts a native process: no sandbox to contain it");
    }
    None
}

/// Whether an expectation records a guest trap: an error of kind `trap` or `failed`, or the
/// failure policy's local reply.
fn expects_trap(v: &Value) -> bool {
    match v {
        Value::Object(o) => {
            matches!(o.get("kind").and_then(Value::as_str), Some("trap" | "failed"))
                || o.get("details").and_then(Value::as_str) == Some("wasm_fail_stream")
                || o.values().any(expects_trap)
        }
        Value::Array(a) => a.iter().any(expects_trap),
        _ => false,
    }
}

/// The native library that stands for a fixture module on engines that do not run wasm.
pub fn native_library(spec: &str) -> Option<PathBuf> {
    let name = spec.strip_suffix(".wasip1.wasm")?;
    Some(
        root_dir()
            .join("fixtures/target")
            .join(env!("WASMUX_CONFORMANCE_TARGET"))
            .join("release")
            .join(format!("libfixture_{}.so", name.replace('-', "_"))),
    )
}

/// What to give `runtime` for a module spec: the module's bytes, or for an engine that does
/// not run wasm the path of the fixture's native library.
///
/// # Errors
/// As [`load_module`]; a native library that was not built.
pub fn load_module_for(spec: &str, runtime: Runtime) -> Result<Vec<u8>, String> {
    if runtime.runs_wasm() {
        return load_module(spec);
    }
    let path = native_library(spec).ok_or_else(|| format!("`{spec}` has no native build"))?;
    if !path.is_file() {
        return Err(format!("{} is missing: run scripts/build-native-fixtures.sh", path.display()));
    }
    Ok(path.to_string_lossy().into_owned().into_bytes())
}

/// Checks that two engines produced the same record for one trial, apart from the keys that
/// name the engine or list the host functions it linked (`engine`, `coverage`: a native filter
/// calls no WASI function), and the snapshot status a run with snapshots on adds (`snapshots`).
///
/// # Errors
/// The first difference.
pub fn same_record(a: &Value, b: &Value) -> Result<(), String> {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("engine");
            o.remove("coverage");
            o.remove("snapshots");
        }
        v
    };
    let (a, b) = (strip(a), strip(b));
    compare(&a, &b).and_then(|()| compare(&b, &a))
}

/// Compares `expect` as a subset of `actual` ([`wasmux::testing::subset`], the test kit's
/// record comparison); returns a readable path to the first mismatch.
///
/// # Errors
/// The first mismatch: `path: expected X, found Y`.
pub fn compare(expect: &Value, actual: &Value) -> Result<(), String> {
    wasmux::testing::subset(expect, actual)
}

/// What running one case on one engine and one module gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `Ok` when the record matches the expectation, else the first mismatch.
    pub result: Result<(), String>,
    /// The record, when the module loaded.
    pub record: Option<Value>,
    /// Host functions the guest called (the record's `coverage`).
    pub coverage: Vec<String>,
    /// The ABI version the module declared (the record's `abi_version`).
    pub abi_version: Option<String>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Runs one case with one module on one engine and compares.
pub fn run_case(case: &Case, module: &str, runtime: Runtime) -> Outcome {
    run_case_with(case, module, runtime, SnapshotPolicy::Off)
}

/// [`run_case`] with the plugins' instances started from snapshots under `snapshot`
/// ([`wasmux::SnapshotPolicy`]).
pub fn run_case_with(case: &Case, module: &str, runtime: Runtime, snapshot: SnapshotPolicy) -> Outcome {
    let start = Instant::now();
    let mut out =
        Outcome { result: Ok(()), record: None, coverage: Vec::new(), abi_version: None, elapsed: Duration::ZERO };
    // Natively, one thread runs one live instance of a library loaded by path; a scenario with
    // several VMs gets the library's bytes, which load as a private copy per VM.
    let several_vms = !case.scenario.plugins.is_empty() && !runtime.runs_wasm();
    let load = |spec: &str| {
        let w = load_module_for(spec, runtime)?;
        if !several_vms {
            return Ok(w);
        }
        let path = String::from_utf8(w).map_err(|e| e.to_string())?;
        std::fs::read(&path).map_err(|e| format!("cannot read {path}: {e}"))
    };
    let wasm = match load(module) {
        Ok(w) => w,
        Err(e) => {
            out.result = Err(format!("cannot load module `{module}`: {e}"));
            return out;
        }
    };
    let mut expect = case.expect.clone();
    let load_error = expect.as_object_mut().and_then(|o| o.remove("load_error"));
    let wanted: Vec<String> = match &load_error {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect(),
        Some(other) => vec![other.to_string()],
    };
    let mut options = scenario::RunOptions::default();
    options.snapshot = snapshot;
    out.result = match scenario::run_with_options(runtime, &wasm, &case.scenario, None, Some(&load), &options) {
        Err(e) => {
            let text = e.to_string();
            if load_error.is_none() {
                Err(format!("loading or running failed: {text}"))
            } else if let Some(miss) = wanted.iter().find(|w| !text.contains(w.as_str())) {
                Err(format!("$.load_error: expected an error containing {miss:?}, found: {text}"))
            } else {
                Ok(())
            }
        }
        Ok(record) => {
            out.coverage = record
                .get("coverage")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            out.abi_version = record.get("abi_version").and_then(Value::as_str).map(str::to_string);
            let r = if load_error.is_some() {
                Err(format!("$.load_error: expected loading to fail with {wanted:?}, but it loaded"))
            } else {
                compare(&expect, &record)
            };
            out.record = Some(record);
            r
        }
    };
    out.elapsed = start.elapsed();
    out
}

/// The verdict of one trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Expected outcome.
    Pass,
    /// Unexpected outcome (the first mismatch).
    Fail(String),
    /// A declared gap that failed as declared (reason, mismatch).
    Gap(String, String),
    /// A declared gap that passed: the gap must be removed.
    GapPassed(String),
}

impl Verdict {
    /// Whether the suite accepts this verdict.
    pub fn ok(&self) -> bool {
        matches!(self, Self::Pass | Self::Gap(..))
    }

    /// Matrix label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail(_) => "FAIL",
            Self::Gap(..) => "gap",
            Self::GapPassed(_) => "FAIL(gap passes)",
        }
    }

    /// The message for a failing trial.
    pub fn message(&self) -> Option<String> {
        match self {
            Self::Pass | Self::Gap(..) => None,
            Self::Fail(m) => Some(m.clone()),
            Self::GapPassed(r) => Some(format!("declared gap now passes ({r}): remove the gap from the case file")),
        }
    }
}

/// Applies the case's gap declaration for `engine` to an outcome.
pub fn verdict(case: &Case, engine: &str, outcome: &Outcome) -> Verdict {
    match (case.gap(engine), &outcome.result) {
        (None, Ok(())) => Verdict::Pass,
        (None, Err(e)) => Verdict::Fail(e.clone()),
        (Some(g), Ok(())) => Verdict::GapPassed(g.to_string()),
        (Some(g), Err(e)) => Verdict::Gap(g.to_string(), e.clone()),
    }
}

/// One trial: a case, a module and an engine.
#[derive(Debug, Clone)]
pub struct TrialSpec {
    /// Index into the case list.
    pub case: usize,
    /// Module spec.
    pub module: String,
    /// Engine.
    pub runtime: Runtime,
    /// `<engine>/<case>` or `<engine>/<case>@<variant>`.
    pub name: String,
}

/// Every trial of the suite, engines outermost; trials [`not_applicable`] to an engine are left out.
pub fn plan(cases: &[Case], runtimes: &[Runtime]) -> Vec<TrialSpec> {
    let mut out = Vec::new();
    for rt in runtimes {
        for (i, c) in cases.iter().enumerate() {
            for m in c.modules.iter().filter(|m| not_applicable(c, m, *rt).is_none()) {
                let name = match c.variant(m) {
                    Some(v) => format!("{}/{}@{v}", rt.name(), c.name),
                    None => format!("{}/{}", rt.name(), c.name),
                };
                out.push(TrialSpec { case: i, module: m.clone(), runtime: *rt, name });
            }
        }
    }
    out
}

/// Host-function coverage: function → ABI version → cases (trial labels without engine).
#[derive(Debug, Clone, Default)]
pub struct Coverage {
    /// `name → version → cases`.
    pub by_function: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// Whether any record had a `coverage` key.
    pub seen_key: bool,
}

impl Coverage {
    /// Adds one outcome.
    pub fn add(&mut self, label: &str, outcome: &Outcome) {
        let Some(rec) = &outcome.record else { return };
        if rec.get("coverage").is_some() {
            self.seen_key = true;
        }
        let Some(v) = &outcome.abi_version else { return };
        for f in &outcome.coverage {
            self.by_function.entry(f.clone()).or_default().entry(v.clone()).or_default().insert(label.to_string());
        }
    }

    /// `(version, function)` pairs of the ABI no case exercised.
    pub fn uncovered(&self) -> Vec<(AbiVersion, &'static str)> {
        let mut out = Vec::new();
        for v in AbiVersion::ALL {
            for f in proxy_funcs(v) {
                let hit = self.by_function.get(f.name).is_some_and(|m| m.contains_key(v.as_str()));
                if !hit {
                    out.push((v, f.name));
                }
            }
        }
        out
    }

    /// The coverage check's result.
    ///
    /// # Errors
    /// Lists every uncovered `(version, function)` pair.
    pub fn check(&self) -> Result<(), String> {
        let un = self.uncovered();
        if un.is_empty() {
            return Ok(());
        }
        let mut msg = String::new();
        if !self.seen_key {
            msg.push_str("note: no record had a `coverage` key; every function counts as uncovered\n");
        }
        msg.push_str(&format!("{} (version, host function) pairs are exercised by no case:\n", un.len()));
        for (v, f) in un {
            msg.push_str(&format!("  {} {f}\n", v.as_str()));
        }
        Err(msg)
    }

    /// The table as JSON: `{function: {version: [cases]}}` for every ABI function plus any other
    /// function that was called.
    pub fn to_json(&self) -> Value {
        let mut all: BTreeMap<String, Value> = BTreeMap::new();
        for v in AbiVersion::ALL {
            for f in proxy_funcs(v) {
                let cases: Vec<&String> = self
                    .by_function
                    .get(f.name)
                    .and_then(|m| m.get(v.as_str()))
                    .map(|s| s.iter().collect())
                    .unwrap_or_default();
                all.entry(f.name.to_string()).or_insert_with(|| json!({}))[v.as_str()] = json!(cases);
            }
        }
        for (f, m) in &self.by_function {
            if !all.contains_key(f) {
                all.insert(f.clone(), json!(m));
            }
        }
        json!(all)
    }
}

/// The result of a whole run.
#[derive(Debug, Clone)]
pub struct SuiteReport {
    /// Engines run.
    pub engines: Vec<String>,
    /// Trial label without engine (`case` or `case@variant`) → engine → verdict.
    pub matrix: BTreeMap<String, BTreeMap<String, Verdict>>,
    /// Host-function coverage over every trial.
    pub coverage: Coverage,
    /// Whether coverage is judged: some engine of the run ran every case of the suite. Coverage
    /// is a property of the suite, so a run on engines that leave cases out (the null engine
    /// runs no WAT micro-modules) does not judge it.
    pub coverage_judged: bool,
    /// Wall time.
    pub elapsed: Duration,
}

impl SuiteReport {
    /// Whether every trial and, when judged, the coverage check pass.
    pub fn ok(&self) -> bool {
        self.matrix.values().all(|m| m.values().all(Verdict::ok))
            && (!self.coverage_judged || self.coverage.check().is_ok())
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        let matrix: BTreeMap<&String, BTreeMap<&String, Value>> = self
            .matrix
            .iter()
            .map(|(c, m)| {
                let row = m
                    .iter()
                    .map(|(e, v)| {
                        let mut o = json!({"verdict": v.label()});
                        match v {
                            Verdict::Fail(m) => o["message"] = json!(m),
                            Verdict::Gap(r, m) => {
                                o["gap"] = json!(r);
                                o["message"] = json!(m);
                            }
                            Verdict::GapPassed(r) => o["gap"] = json!(r),
                            Verdict::Pass => {}
                        }
                        (e, o)
                    })
                    .collect();
                (c, row)
            })
            .collect();
        let uncovered: Vec<Value> =
            self.coverage.uncovered().iter().map(|(v, f)| json!({"version": v.as_str(), "function": f})).collect();
        json!({
            "ok": self.ok(),
            "engines": self.engines,
            "matrix": matrix,
            "coverage": self.coverage.to_json(),
            "uncovered": uncovered,
            "coverage_judged": self.coverage_judged,
            "elapsed_ms": self.elapsed.as_millis() as u64,
        })
    }
}

impl fmt::Display for SuiteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.matrix.keys().map(String::len).max().unwrap_or(4).max(4);
        write!(f, "{:width$}", "case")?;
        for e in &self.engines {
            write!(f, "  {e:>10}")?;
        }
        writeln!(f)?;
        let mut failures = Vec::new();
        for (case, row) in &self.matrix {
            write!(f, "{case:width$}")?;
            for e in &self.engines {
                let v = row.get(e);
                write!(f, "  {:>10}", v.map_or("-", Verdict::label))?;
                if let Some(m) = v.and_then(Verdict::message) {
                    failures.push(format!("{e}/{case}: {m}"));
                }
            }
            writeln!(f)?;
        }
        writeln!(f, "\nhost-function coverage (function: version -> cases):")?;
        for (name, versions) in self.coverage.to_json().as_object().into_iter().flatten() {
            let Some(vs) = versions.as_object() else { continue };
            let cells: Vec<String> = vs
                .iter()
                .map(|(v, cases)| {
                    let list: Vec<&str> = cases.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    if list.is_empty() { format!("{v}: UNCOVERED") } else { format!("{v}: {}", list.join(", ")) }
                })
                .collect();
            writeln!(f, "  {name}: {}", cells.join("; "))?;
        }
        let total: usize = self.matrix.values().map(BTreeMap::len).sum();
        let passed = self.matrix.values().flat_map(BTreeMap::values).filter(|v| **v == Verdict::Pass).count();
        let gaps = self.matrix.values().flat_map(BTreeMap::values).filter(|v| matches!(v, Verdict::Gap(..))).count();
        writeln!(
            f,
            "\n{total} trials: {passed} pass, {gaps} declared gaps, {} failures ({:.1} s)",
            failures.len(),
            self.elapsed.as_secs_f64()
        )?;
        for m in &failures {
            // The first line; the JSON report has the whole message.
            writeln!(f, "FAIL {}", m.lines().next().unwrap_or_default())?;
        }
        if !self.coverage_judged {
            writeln!(f, "coverage not judged: no engine of this run runs every case of the suite")?;
        } else if let Err(e) = self.coverage.check() {
            write!(f, "FAIL coverage/host-functions: {e}")?;
        }
        Ok(())
    }
}

/// Runs every case of `dir` on every engine in `runtimes`.
///
/// # Errors
/// Invalid case files.
pub fn run_suite(dir: &Path, runtimes: &[Runtime]) -> Result<SuiteReport, String> {
    let start = Instant::now();
    let cases = load_cases(dir)?;
    let every_trial =
        |rt: &Runtime| cases.iter().all(|c| c.modules.iter().all(|m| not_applicable(c, m, *rt).is_none()));
    let mut report = SuiteReport {
        engines: runtimes.iter().map(|r| r.name().to_string()).collect(),
        matrix: BTreeMap::new(),
        coverage: Coverage::default(),
        coverage_judged: runtimes.iter().any(every_trial),
        elapsed: Duration::ZERO,
    };
    for t in plan(&cases, runtimes) {
        let case = &cases[t.case];
        let outcome = run_case(case, &t.module, t.runtime);
        let label = trial_label(case, &t.module);
        report.coverage.add(&label, &outcome);
        report
            .matrix
            .entry(label)
            .or_default()
            .insert(t.runtime.name().to_string(), verdict(case, t.runtime.name(), &outcome));
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// `case` or `case@variant`.
pub fn trial_label(case: &Case, module: &str) -> String {
    match case.variant(module) {
        Some(v) => format!("{}@{v}", case.name),
        None => case.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_compare() {
        let a = json!({"x": 1, "y": {"z": [1, {"k": 2, "extra": 3}]}});
        assert!(compare(&json!({"y": {"z": [1, {"k": 2}]}}), &a).is_ok());
        let e = compare(&json!({"y": {"z": [1, {"k": 3}]}}), &a).unwrap_err();
        assert!(e.starts_with("$.y.z[1].k: expected 3, found 2"), "{e}");
        assert!(compare(&json!({"y": {"z": [1]}}), &a).unwrap_err().contains("expected 1 elements, found 2"));
        assert!(compare(&json!({"w": 1}), &a).unwrap_err().contains("no such key"));
    }

    #[test]
    fn trap_expectations_are_found_at_any_depth() {
        assert!(expects_trap(&json!({"events": [{"error": {"kind": "failed"}}]})));
        assert!(expects_trap(&json!({"start": {"kind": "trap", "trap": "unreachable"}})));
        assert!(expects_trap(&json!({"streams": {"a": {"local_reply": {"details": "wasm_fail_stream"}}}})));
        assert!(!expects_trap(&json!({"start": {"kind": "rejected"}, "logs": [{"kind": "x"}]})));
    }

    fn report(judged: bool, verdict: Verdict) -> SuiteReport {
        let row = BTreeMap::from([("null".to_string(), verdict)]);
        SuiteReport {
            engines: vec!["null".into()],
            matrix: BTreeMap::from([("case".to_string(), row)]),
            coverage: Coverage::default(),
            coverage_judged: judged,
            elapsed: Duration::ZERO,
        }
    }

    /// Coverage is a property of the suite: a run whose engines leave cases out passes on its
    /// trials alone, and says coverage was not judged.
    #[test]
    fn coverage_is_judged_only_on_runs_of_the_whole_suite() {
        let partial = report(false, Verdict::Pass);
        assert!(partial.ok());
        assert!(partial.to_string().contains("coverage not judged"));
        let whole = report(true, Verdict::Pass);
        assert!(!whole.ok(), "nothing is covered");
        assert!(whole.to_string().contains("FAIL coverage/host-functions"));
    }

    /// A failing trial's reason is printed under the table, its first line.
    #[test]
    fn failures_are_explained_under_the_table() {
        let text = report(false, Verdict::Fail("cannot load module `x.wasm`: missing\nsecond line".into())).to_string();
        assert!(text.contains("FAIL null/case: cannot load module `x.wasm`: missing\n"), "{text}");
        assert!(!text.contains("second line"), "{text}");
    }

    #[test]
    fn variants() {
        assert_eq!(module_variant("headers.wasip1.wasm"), "wasip1");
        assert_eq!(module_variant("wat:trap.wat"), "trap");
    }
}
