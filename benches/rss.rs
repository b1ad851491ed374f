//! Resident memory per extra instance on every engine compiled in: not a timing, so this bench
//! has its own `main` and prints a table.
//!
//! For each fixture, a first instance is created and kept (start-up allocations of the engine
//! and the module are not "extra"), the resident set size is read from `/proc/self/statm`, then
//! instances are added (`compiled.instantiate()`: through `proxy_on_configure`, idle) up to 1,
//! 10 and 100 extra, reading RSS at each step. The figure is `(RSS(n) - RSS(0)) / n`; the
//! guest's linear memory size is printed beside it, since the target is the host's overhead
//! beyond the guest's own memory. Ids are `{engine}/memory/{fixture}`; a filter argument
//! selects ids as criterion does. Each id is measured in a fresh process (this bench runs
//! itself), so that no heap freed by an earlier measurement is reused by the instances counted.
//!
//! `cargo bench -p wasmux-benches --bench rss`

mod common;

use common::{BENCH_JSON_CONFIG, engines, load};

/// Set in the child processes that measure one id each.
const CHILD: &str = "WASMUX_RSS_CHILD";

/// Resident set size of this process in bytes (Linux).
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
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
        for (case, name, config) in [("headers", "headers", &b""[..]), ("bench_json", "bench-json", BENCH_JSON_CONFIG)]
        {
            let id = format!("{rt}/memory/{case}");
            if !filters.is_empty() && !filters.iter().any(|f| id.contains(f.as_str())) {
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
            let Some(compiled) = load(&engine, name, config) else { continue };
            let mut first = compiled.instantiate().expect("instantiates");
            let mut extra = Vec::with_capacity(100);
            let base = rss().unwrap_or(0);
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
            let guest = first.vm().instance().memory_size();
            println!("{id:<40} per extra instance  {}   (guest linear memory {})", line.join("  "), kib(guest as f64));
        }
    }
}
