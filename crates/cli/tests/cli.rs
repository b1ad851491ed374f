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
