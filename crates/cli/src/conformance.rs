//! `wasmux conformance`: runs the conformance suite and prints the engine × case matrix and the
//! host-function coverage table.

use std::path::PathBuf;
use std::process::ExitCode;

use wasmux::Runtime;

/// Runs the suite on `engines` (every engine compiled in when empty) with the cases of `cases`
/// (the suite's own directory when `None`); writes the report as JSON to `json` if given.
///
/// # Errors
/// Unknown engines, invalid case files, an unwritable JSON file.
pub(crate) fn run(
    engines: &[String],
    cases: Option<PathBuf>,
    json: Option<PathBuf>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let runtimes: Vec<Runtime> = if engines.is_empty() {
        Runtime::available().to_vec()
    } else {
        engines.iter().map(|e| e.parse()).collect::<Result<_, _>>()?
    };
    let dir = cases.unwrap_or_else(wasmux_conformance::cases_dir);
    let report = wasmux_conformance::run_suite(&dir, &runtimes)?;
    crate::print_out(&report.to_string());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report.to_json())?;
        std::fs::write(&path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
