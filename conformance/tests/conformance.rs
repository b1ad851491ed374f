//! Runs every conformance case on every engine compiled in (`<engine>/<case>[@variant]`), plus
//! the host-function coverage check (`coverage/host-functions`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use libtest_mimic::{Arguments, Failed, Trial};
use wasmux::{Runtime, SnapshotPolicy};
use wasmux_conformance::{
    Case, Coverage, Outcome, TrialSpec, cases_dir, load_cases, plan, run_case, run_case_with, same_record, trial_label,
    verdict,
};

type Cache = Arc<Mutex<HashMap<String, Outcome>>>;

fn outcome(cache: &Cache, cases: &[Case], t: &TrialSpec) -> Outcome {
    if let Some(o) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&t.name) {
        return o.clone();
    }
    let o = run_case(&cases[t.case], &t.module, t.runtime);
    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(t.name.clone(), o.clone());
    o
}

fn main() {
    let args = Arguments::from_args();
    let cases = match load_cases(&cases_dir()) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("invalid case files:\n{e}");
            std::process::exit(101);
        }
    };
    let specs = Arc::new(plan(&cases, Runtime::available()));
    let cache: Cache = Arc::default();
    let mut trials = Vec::new();
    for t in specs.iter() {
        let (cases, cache, t) = (cases.clone(), cache.clone(), t.clone());
        trials.push(Trial::test(t.name.clone(), move || {
            let o = outcome(&cache, &cases, &t);
            let case = &cases[t.case];
            match verdict(case, t.runtime.name(), &o).message() {
                None => Ok(()),
                Some(m) => Err(Failed::from(m)),
            }
        }));
    }
    let (cases2, cache2, specs2) = (cases.clone(), cache.clone(), specs.clone());
    trials.push(Trial::test("coverage/host-functions", move || {
        let mut cov = Coverage::default();
        for t in specs2.iter() {
            let o = outcome(&cache2, &cases2, t);
            cov.add(&trial_label(&cases2[t.case], &t.module), &o);
        }
        if !cov.seen_key {
            eprintln!("note: no record has a `coverage` key yet; treating coverage as empty");
        }
        cov.check().map_err(Failed::from)
    }));
    // An engine that does not run wasm (null) runs the same fixture sources natively: its
    // records must equal those of the first wasm engine, not just meet the expectations.
    if let Some(wasm) = Runtime::available().iter().copied().find(|r| r.runs_wasm()) {
        for native in Runtime::available().iter().copied().filter(|r| !r.runs_wasm()) {
            let (cases, cache, specs) = (cases.clone(), cache.clone(), specs.clone());
            trials.push(Trial::test(format!("identity/{native}-records-equal-{wasm}"), move || {
                let mut diffs = Vec::new();
                for t in specs.iter().filter(|t| t.runtime == native) {
                    let Some(w) = specs.iter().find(|w| w.runtime == wasm && w.case == t.case && w.module == t.module)
                    else {
                        continue;
                    };
                    let (a, b) = (outcome(&cache, &cases, t), outcome(&cache, &cases, w));
                    if let (Some(a), Some(b)) = (&a.record, &b.record)
                        && let Err(e) = same_record(a, b)
                    {
                        diffs.push(format!("{}: {e}", t.name));
                    }
                }
                if diffs.is_empty() { Ok(()) } else { Err(Failed::from(diffs.join("\n"))) }
            }));
        }
    }
    // Snapshots change nothing a filter or embedder sees: every case, started from snapshots
    // (policy freeze_clock_and_random: the scenarios' clock is fixed), gives the record it gives
    // without, on every wasm engine. Every wasm engine takes snapshots (it reads globals:
    // `WasmInstance::global`), and most cases must take one, so that this checks snapshots
    // rather than the fallback.
    for rt in Runtime::available().iter().copied().filter(|r| r.runs_wasm()) {
        let (cases, cache, specs) = (cases.clone(), cache.clone(), specs.clone());
        trials.push(Trial::test(format!("snapshot/{rt}-records-equal-without"), move || {
            let (mut diffs, mut taken, mut total) = (Vec::new(), 0, 0);
            let mut fallbacks = std::collections::BTreeMap::<String, usize>::new();
            for t in specs.iter().filter(|t| t.runtime == rt) {
                let plain = outcome(&cache, &cases, t);
                let snap = run_case_with(&cases[t.case], &t.module, rt, SnapshotPolicy::FreezeClockAndRandom);
                total += 1;
                match (&plain.record, &snap.record) {
                    (Some(a), Some(b)) => {
                        let statuses = b.get("snapshots").and_then(|s| s.as_array()).cloned().unwrap_or_default();
                        match statuses.first().and_then(|s| s.as_str()) {
                            Some(s) if s.starts_with("taken") => taken += 1,
                            Some(s) => *fallbacks.entry(s.to_string()).or_insert(0) += 1,
                            None => {}
                        }
                        if let Err(e) = same_record(a, b) {
                            diffs.push(format!("{}: {e} (snapshots: {statuses:?})", t.name));
                        }
                    }
                    (a, b) if a.is_some() != b.is_some() => {
                        diffs.push(format!(
                            "{}: a record only {} snapshots",
                            t.name,
                            if a.is_some() { "without" } else { "with" }
                        ));
                    }
                    _ => {}
                }
            }
            eprintln!("{rt}: {taken} of {total} trials started from a snapshot");
            for (why, n) in &fallbacks {
                eprintln!("  {n} x {why}");
            }
            if taken * 2 < total {
                diffs.push(format!("only {taken} of {total} trials started from a snapshot"));
            }
            if diffs.is_empty() { Ok(()) } else { Err(Failed::from(diffs.join("\n"))) }
        }));
    }
    libtest_mimic::run(&args, trials).exit();
}
