//! The wasmi backend: the shared backend suite, then what only wasmi has (its settings in the
//! fingerprint, fuel slices, start functions, the fuel rate behind its slice size).

use std::sync::Arc;
use std::time::Duration;

use wasmux_abi::testsuite::{Backend, Frames, call, deadline};
use wasmux_abi::{HostState, Limits, TrapKind, WasmEngine, WasmInstance};
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

/// An engine with default settings but `fuel_slice` fuel per slice.
fn sliced(fuel_slice: u64) -> Arc<dyn WasmEngine> {
    Arc::new(WasmiEngine::new(WasmiConfig::default().fuel_slice(fuel_slice)).expect("engine"))
}

/// Compiles and instantiates a WAT module on `engine`.
fn instance_on(engine: &Arc<dyn WasmEngine>, wat: &str, limits: &Limits) -> Box<dyn WasmInstance> {
    let module = engine.compile(&wat::parse_str(wat).expect("wat")).expect("compile");
    module.instantiate(HostState::for_tests(), limits).expect("instantiate")
}

/// Translating a function on its first call costs no fuel: with slices far smaller than the
/// function, the call pauses and resumes many times and never fails.
#[test]
fn first_calls_of_large_functions_fit_in_any_slice() {
    let mut body = String::new();
    for _ in 0..5_000 {
        body.push_str("(local.set $x (i32.add (local.get $x) (i32.const 1)))\n");
    }
    let wat = format!(
        r#"(module
      (func $big (result i32) (local $x i32) {body} (local.get $x))
      (func (export "run") (param $n i32) (result i32)
        (loop $l (local.set $n (i32.sub (local.get $n) (i32.const 1))) (br_if $l (local.get $n)))
        (call $big)))"#
    );
    let engine = sliced(100);
    for deadline in [None, Some(Duration::from_secs(60))] {
        let limits = Limits { callback_deadline: deadline, ..Limits::default() };
        let mut vm = instance_on(&engine, &wat, &limits);
        assert_eq!(call(&mut *vm, "run", &[10_000]).unwrap(), Some(5_000));
    }
}

const TABLE_GROW: &str = r#"(module
  (table $t 0 funcref)
  (global $runs (mut i32) (i32.const 0))
  (func (export "grow") (param i32) (result i32)
    (global.set $runs (i32.add (global.get $runs) (i32.const 1)))
    (table.grow $t (ref.null func) (local.get 0)))
  (func (export "runs") (result i32) (global.get $runs)))"#;

/// wasmi 2.0.0 would resume a `table.grow` that ran out of fuel from a stale instruction
/// pointer, replaying guest code; it traps instead, and the elements it asked for are not
/// counted against the limit. Growth by a few elements costs no fuel and never traps.
#[test]
fn table_grow_out_of_fuel_traps_instead_of_replaying() {
    let engine = sliced(1);
    let limits = Limits { max_table_elements: 100, ..Limits::default() };
    let mut vm = instance_on(&engine, TABLE_GROW, &limits);
    // 80 elements cost 5 fuel: more than a slice of 1 ever has left at that point.
    match call(&mut *vm, "grow", &[80]) {
        Err(wasmux_abi::Error::Trap(trap)) => {
            assert_eq!(trap.kind, TrapKind::Other, "{trap}");
            assert!(trap.message.contains("table.grow"), "{trap}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(call(&mut *vm, "runs", &[]).unwrap(), Some(1));
    // 12 elements cost nothing; had the 80 been counted, the second growth would be refused.
    assert_eq!(call(&mut *vm, "grow", &[12]).unwrap(), Some(0));
    assert_eq!(call(&mut *vm, "grow", &[12]).unwrap(), Some(12));
    assert_eq!(call(&mut *vm, "runs", &[]).unwrap(), Some(3));
    // With ordinary slices the same growth is fine, and the limit still holds.
    let mut vm = BACKEND.instance_with(TABLE_GROW, &limits);
    assert_eq!(call(&mut *vm, "grow", &[80]).unwrap(), Some(0));
    assert_eq!(call(&mut *vm, "grow", &[21]).unwrap(), Some(0xffff_ffff));
    assert_eq!(call(&mut *vm, "grow", &[20]).unwrap(), Some(80));
}

/// A module's `start` function cannot be paused; it still stops under the callback deadline,
/// spinning in wasm (its fuel runs out) or calling the host (the clock).
#[test]
fn start_functions_run_under_the_deadline() {
    let spin = r#"(module (func $spin (loop $l (br $l))) (start $spin))"#;
    let host_loop = r#"(module
      (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
      (memory 2)
      (func $host_loop (loop $l (drop (call $random (i32.const 0) (i32.const 65536))) (br $l)))
      (start $host_loop))"#;
    for wat in [spin, host_loop] {
        let module = engine().compile(&wat::parse_str(wat).unwrap()).unwrap();
        let started = std::time::Instant::now();
        let result = module.instantiate(HostState::for_tests(), &deadline(50)).map(|_| None);
        assert_eq!(BACKEND.trap_kind(result), TrapKind::Deadline);
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }
}

/// Measures what guest code burns per millisecond, the basis of
/// [`wasmux_wasmi::DEFAULT_FUEL_SLICE`], and what slices cost. Run it in release on an idle
/// machine:
/// `cargo test --release -p wasmux-wasmi --test backend -- --ignored --nocapture fuel_rate`.
#[test]
#[ignore = "a measurement, not a test"]
fn fuel_rate() {
    let costly = r#"(module
      (type $f (func (param i64) (result i64)))
      (table 1 funcref) (elem (i32.const 0) $id)
      (func $id (type $f) (local.get 0))
      (func (export "spin") (local $x i64)
        (local.set $x (i64.const 12345678901))
        (loop $l
          (local.set $x (i64.add (i64.div_u (local.get $x) (i64.const 3)) (i64.const 7777777777)))
          (local.set $x (call_indirect (type $f) (local.get $x) (i32.const 0)))
          (br $l))))"#;
    let mut config = wasmi::Config::default();
    config.consume_fuel(true);
    let raw = wasmi::Engine::new(&config);
    let fuel = 500_000_000;
    for (name, wat) in [("empty loop", SPIN), ("div + call_indirect loop", costly)] {
        let module = wasmi::Module::new(&raw, wat::parse_str(wat).unwrap()).unwrap();
        let mut store = wasmi::Store::new(&raw, ());
        let instance = wasmi::Linker::new(&raw).instantiate_and_start(&mut store, &module).unwrap();
        let spin = instance.get_typed_func::<(), ()>(&store, "spin").unwrap();
        let mut best = f64::MAX;
        for _ in 0..5 {
            store.set_fuel(fuel).unwrap();
            let start = std::time::Instant::now();
            assert!(spin.call(&mut store, ()).is_err());
            best = best.min(start.elapsed().as_secs_f64() * 1e3);
        }
        println!("wasmi {name}: {:.0} fuel/ms ({fuel} fuel in {best:.1} ms)", fuel as f64 / best);
    }
    // The same through this crate: what pausing costs (the same loop with one slice, default
    // slices and slices 100 times smaller), and how long deadlines really take.
    let count = r#"(module (func (export "count") (param $n i32) (result i32)
      (loop $l (local.set $n (i32.sub (local.get $n) (i32.const 1))) (br_if $l (local.get $n)))
      (local.get $n)))"#;
    let small = wasmux_wasmi::DEFAULT_FUEL_SLICE / 100;
    let configs = [("one", sliced(u64::MAX / 2)), ("default", engine()), ("1/100", sliced(small))];
    let unlimited = Limits { callback_deadline: None, ..Limits::default() };
    for (slice, engine) in &configs {
        let mut vm = instance_on(engine, count, &unlimited);
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = std::time::Instant::now();
            assert_eq!(call(&mut *vm, "count", &[200_000_000]).unwrap(), Some(0));
            best = best.min(start.elapsed().as_secs_f64() * 1e3);
        }
        println!("{slice} slice(s): 2 × 10⁸ loop iterations in {best:.1} ms");
    }
    for (slice, engine) in &configs[1..] {
        for ms in [10, 500] {
            let mut vm = instance_on(engine, SPIN, &deadline(ms));
            let start = std::time::Instant::now();
            assert_eq!(BACKEND.trap_kind(call(&mut *vm, "spin", &[])), TrapKind::Deadline);
            println!("{slice} slices: a {ms} ms deadline stopped the empty loop after {:?}", start.elapsed());
        }
    }
}
