//! The filter tests itself: builds its `.wasm` and runs `tests/filter.yaml` on every engine
//! compiled in (the null engine is skipped: it would need the filter's native build).

use std::path::Path;
use std::process::Command;

/// Builds this crate for `wasm32-wasip1` (release) into its own target directory and returns
/// the module's bytes.
fn build_wasm() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = dir.join("../../target/example-filter");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip1",
            "-p",
            env!("CARGO_PKG_NAME"),
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(dir)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the filter for wasm32-wasip1 failed (rustup target add wasm32-wasip1?)");
    let wasm = target.join("wasm32-wasip1/release/wasmux_example_filter.wasm");
    std::fs::read(&wasm).unwrap_or_else(|e| panic!("{}: {e}", wasm.display()))
}

#[test]
fn the_filter_passes_its_tests_on_every_engine() {
    let file = wasmux::testing::TestFile::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filter.yaml"))
        .unwrap_or_else(|e| panic!("{e}"))
        .with_module(build_wasm());
    let report = file.run_everywhere();
    println!("{}", report.matrix());
    report.assert_passed();
    assert!(report.counts().0 >= 3, "at least one engine ran the three tests");
}
