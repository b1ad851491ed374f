//! The wasmi backend: the shared backend suite, then what only wasmi has (its settings in the
//! fingerprint, the fuel rate behind its deadlines).

use std::sync::Arc;
use std::time::Duration;

use wasmux_abi::testsuite::{Backend, Frames, call};
use wasmux_abi::{Limits, TrapKind, WasmEngine};
use wasmux_wasmi::{WasmiConfig, WasmiEngine};

fn engine() -> Arc<dyn WasmEngine> {
    Arc::new(WasmiEngine::new(WasmiConfig::default()).expect("engine"))
}

/// wasmi records no wasm frames: backtraces list the exports the host called.
const BACKEND: Backend = Backend { name: "wasmi", engine, frames: Frames::EntryPoints };

wasmux_abi::backend_suite!(BACKEND);

#[test]
fn fingerprint_names_the_version_and_settings() {
    let a = engine().fingerprint();
    assert!(a.starts_with("wasmi-2.0.0-"), "{a}");
    let b = WasmiEngine::new(WasmiConfig::default().max_stack_bytes(512 << 10)).unwrap().fingerprint();
    assert_ne!(a, b);
}

const SPIN: &str = r#"(module (func (export "spin") (loop $l (br $l))))"#;

/// Measures what an empty loop burns per millisecond, the basis of
/// [`wasmux_wasmi::DEFAULT_FUEL_PER_MS`]. Run it in release on an idle machine:
/// `cargo test --release -p wasmux-wasmi --test backend -- --ignored --nocapture fuel_rate`.
#[test]
#[ignore = "a measurement, not a test"]
fn fuel_rate() {
    let mut config = wasmi::Config::default();
    config.consume_fuel(true);
    let engine = wasmi::Engine::new(&config);
    let module = wasmi::Module::new(&engine, wat::parse_str(SPIN).unwrap()).unwrap();
    let mut store = wasmi::Store::new(&engine, ());
    let instance = wasmi::Linker::new(&engine).instantiate_and_start(&mut store, &module).unwrap();
    let spin = instance.get_typed_func::<(), ()>(&store, "spin").unwrap();
    let fuel = 2_000_000_000;
    let mut best = f64::MAX;
    for _ in 0..5 {
        store.set_fuel(fuel).unwrap();
        let start = std::time::Instant::now();
        assert!(spin.call(&mut store, ()).is_err());
        best = best.min(start.elapsed().as_secs_f64() * 1e3);
    }
    println!("wasmi empty loop: {:.0} fuel/ms ({fuel} fuel in {best:.1} ms)", fuel as f64 / best);
    // The same through this crate: how long a 500 ms deadline really takes at the default rate.
    let limits = Limits { callback_deadline: Some(Duration::from_millis(500)), ..Limits::default() };
    let mut vm = BACKEND.instance_with(SPIN, &limits);
    let start = std::time::Instant::now();
    assert_eq!(BACKEND.trap_kind(call(&mut *vm, "spin", &[])), TrapKind::Deadline);
    println!("500 ms deadline at the default rate stopped the loop after {:?}", start.elapsed());
}
