//! Runs every conformance case on every engine compiled in (`<engine>/<case>[@variant]`), plus
//! the host-function coverage check (`coverage/host-functions`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use libtest_mimic::{Arguments, Failed, Trial};
use wasmux::Runtime;
use wasmux_conformance::{
    Case, Coverage, Outcome, TrialSpec, cases_dir, load_cases, plan, run_case, same_record, trial_label, verdict,
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
    libtest_mimic::run(&args, trials).exit();
}
