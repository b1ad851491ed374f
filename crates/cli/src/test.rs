//! `wasmux test`: runs filter test files (expectations in YAML or JSON) on every chosen engine,
//! prints the test × engine matrix and every failure, expected against actual.

use std::path::PathBuf;
use std::process::ExitCode;

use wasmux::Runtime;
use wasmux::testing::{Report, RunSettings, TestFile};

/// What `wasmux test` was asked.
pub(crate) struct Args {
    pub(crate) paths: Vec<PathBuf>,
    pub(crate) engines: Vec<String>,
    pub(crate) module: Option<PathBuf>,
    pub(crate) native: Option<PathBuf>,
    pub(crate) filter: Option<String>,
    pub(crate) junit: Option<PathBuf>,
    pub(crate) trace: bool,
    pub(crate) bench: Option<usize>,
    pub(crate) snapshot: wasmux::SnapshotPolicy,
}

/// Runs the tests; exits 1 when one fails or cannot run, 2 when a file is invalid.
///
/// # Errors
/// Unknown engines, unreadable or invalid test files, an unwritable JUnit file.
pub(crate) fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let runtimes: Vec<Runtime> = if args.engines.is_empty() {
        Runtime::available().to_vec()
    } else {
        args.engines.iter().map(|e| e.parse()).collect::<Result<_, _>>()?
    };
    let files = wasmux::testing::discover(&args.paths).map_err(|e| format!("cannot list test files: {e}"))?;
    if files.is_empty() {
        return Err("no test files found (a test file is YAML or JSON with a top-level `tests` list)".into());
    }
    let module = args.module.as_ref().map(|m| crate::read(m)).transpose()?;
    // Every file is checked before any test runs: a typo in the last file fails fast.
    let mut loaded = Vec::with_capacity(files.len());
    for path in &files {
        let mut file = TestFile::load(path)?;
        if let Some(bytes) = &module {
            file = file.with_module(bytes.clone());
        }
        if let Some(lib) = &args.native {
            file = file.with_native(lib);
        }
        loaded.push(file);
    }
    let mut settings = RunSettings::new();
    if let Some(f) = args.filter {
        settings = settings.filter(f);
    }
    if let Some(runs) = args.bench {
        settings = settings.bench(runs.max(1));
    }
    settings = settings.snapshot(args.snapshot);
    let mut report = Report::default();
    for file in &loaded {
        report.extend(file.run(&runtimes, &settings));
    }
    if report.results.is_empty() {
        return Err("no test matched".into());
    }
    crate::print_out(&report.matrix());
    if args.bench.is_some() {
        crate::print_out("median time of the events (start-up excluded), per test and engine:");
        crate::print_out(&report.bench_matrix());
    }
    let memory = report.memory_matrix();
    if !memory.is_empty() {
        crate::print_out(
            "background streams in flight (guest memory of every VM of the test; host resident set growth):",
        );
        crate::print_out(&memory);
    }
    if args.snapshot != wasmux::SnapshotPolicy::Off {
        crate::print_out(&format!("snapshots ({}):", args.snapshot));
        crate::print_out(report.snapshot_summary().trim_end());
    }
    let failures = report.failures(false);
    if !failures.is_empty() {
        crate::print_out(&failures);
    }
    if args.trace {
        // The host-call trace went to stderr as the tests ran (target `wasmux::strace`).
        eprintln!("(the ABI trace of every test run is above, on stderr)");
    }
    if let Some(path) = args.junit {
        std::fs::write(&path, report.junit()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
