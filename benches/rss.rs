//! Resident memory per extra instance on every engine compiled in: not a timing, so this bench
//! has its own `main` and prints a table.
//!
//! For each fixture, a first instance is created and kept (start-up allocations of the engine
//! and the module are not "extra"), the resident set size is read from `/proc/self/statm`, then
//! instances are added (`compiled.instantiate()`: through `proxy_on_configure`, idle) up to 1,
//! 10 and 100 extra, reading RSS at each step, and once more after each extra instance has
//! served one request (`common::lifecycle`), with the private memory beside it (see [`uss`]).
//! The figure is `(RSS(n) - RSS(0)) / n`; the
//! guest's linear memory size is printed beside it, since the target is the host's overhead
//! beyond the guest's own memory. Fixtures: `headers`, `bench_json`, `go` (the upstream-Go
//! filter), each also `*_snapshot`, loaded with `PluginOptions::snapshot`
//! (`freeze_clock_and_random`), whose instances start from a snapshot. Ids are
//! `{engine}/memory/{fixture}`; a filter argument
//! selects ids as criterion does. Each id is measured in a fresh process (this bench runs
//! itself), so that no heap freed by an earlier measurement is reused by the instances counted.
//!
//! `cargo bench -p wasmux-benches --bench rss`

mod common;

use common::{BENCH_JSON_CONFIG, GO_CONFIG, engines, go_filter, module_bytes, options};
use wasmux::{CompiledPlugin, PluginOptions, SnapshotPolicy};

/// Set in the child processes that measure one id each.
const CHILD: &str = "WASMUX_RSS_CHILD";

/// Resident set size of this process in bytes (Linux).
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Memory only this process holds, in bytes (Linux `smaps_rollup`: private clean plus private
/// dirty pages). RSS counts a page shared by several mappings once per mapping (an engine that
/// maps a module's memory image copy-on-write into every instance maps the same page many
/// times); this counts what the instances really add.
fn uss() -> Option<u64> {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = rollup.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    };
    Some((field("Private_Clean:")? + field("Private_Dirty:")?) * 1024)
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

fn main() {
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if rss().is_none() {
        eprintln!("rss: /proc/self/statm is not readable here; nothing measured");
        return;
    }
    let child = std::env::var_os(CHILD).is_some();
    for (rt, engine) in engines() {
        let cases = [
            ("headers", "headers", &b""[..], SnapshotPolicy::Off),
            ("bench_json", "bench-json", BENCH_JSON_CONFIG, SnapshotPolicy::Off),
            ("go", "go", GO_CONFIG, SnapshotPolicy::Off),
            ("headers_snapshot", "headers", &b""[..], SnapshotPolicy::FreezeClockAndRandom),
            ("bench_json_snapshot", "bench-json", BENCH_JSON_CONFIG, SnapshotPolicy::FreezeClockAndRandom),
            ("go_snapshot", "go", GO_CONFIG, SnapshotPolicy::FreezeClockAndRandom),
        ];
        for (case, name, config, snapshot) in cases {
            let id = format!("{rt}/memory/{case}");
            // A child measures exactly its id; the parent selects ids as criterion does.
            let selected = if child { filters.contains(&id) } else { filters.iter().any(|f| id.contains(f.as_str())) };
            if !filters.is_empty() && !selected {
                continue;
            }
            if !child {
                // One fresh process per id.
                let status = std::env::current_exe()
                    .and_then(|exe| std::process::Command::new(exe).arg(&id).env(CHILD, "1").status());
                if !status.as_ref().is_ok_and(|s| s.success()) {
                    eprintln!("{id}: the measuring process failed: {status:?}");
                }
                continue;
            }
            let bytes = if name == "go" { Some(go_filter()) } else { module_bytes(&*engine, name) };
            let options = PluginOptions { snapshot, ..options(config) };
            let Some(compiled) = bytes.and_then(|b| CompiledPlugin::new(engine.clone(), &b, options).ok()) else {
                eprintln!("note: {id}: the engine does not load it");
                continue;
            };
            let mut first = compiled.instantiate().expect("instantiates");
            let mut extra = Vec::with_capacity(100);
            let (base, base_uss) = (rss().unwrap_or(0), uss().unwrap_or(0));
            let mut line = Vec::new();
            'grow: for n in [1usize, 10, 100] {
                while extra.len() < n {
                    match compiled.instantiate() {
                        Ok(p) => extra.push(p),
                        Err(e) => {
                            // The null engine runs one instance of a library per thread.
                            line.push(format!("{n}: n/a ({e})"));
                            break 'grow;
                        }
                    }
                }
                let grown = rss().unwrap_or(0).saturating_sub(base);
                line.push(format!("{n}: {}", kib(grown as f64 / n as f64)));
            }
            // What the instances hold once each has served a request (the pages a request
            // touches are the instance's own from then on, snapshot or not).
            for p in &mut extra {
                common::lifecycle(p);
            }
            let n = extra.len().max(1) as f64;
            let served = rss().unwrap_or(0).saturating_sub(base);
            let private = uss().unwrap_or(0).saturating_sub(base_uss);
            line.push(format!(
                "after a request each: {} (private {})",
                kib(served as f64 / n),
                kib(private as f64 / n)
            ));
            let guest = first.vm().instance().memory_size();
            let status = compiled.snapshot_status();
            println!(
                "{id:<40} per extra instance  {}   (guest linear memory {}; snapshot {status})",
                line.join("  "),
                kib(guest as f64)
            );
        }
    }
}
