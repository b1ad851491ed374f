//! The wasmer backend, with both compilers: the shared backend suite, then what only wasmer
//! has (the compiler in names and fingerprints, the metering rate).

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmux_abi::testsuite::{Backend, Frames, call};
use wasmux_abi::{Error, Limits, TrapKind, WasmEngine};
use wasmux_wasmer::{Compiler, WasmerConfig, WasmerEngine};

fn engine_with(compiler: Compiler) -> Arc<dyn WasmEngine> {
    Arc::new(WasmerEngine::new(WasmerConfig::default().compiler(compiler)).expect("engine"))
}

mod cranelift {
    use super::*;

    fn engine() -> Arc<dyn WasmEngine> {
        engine_with(Compiler::Cranelift)
    }

    const BACKEND: Backend = Backend { name: "wasmer", engine, frames: Frames::Wasm };

    wasmux_abi::backend_suite!(BACKEND);
}

mod singlepass {
    use super::*;

    fn engine() -> Arc<dyn WasmEngine> {
        engine_with(Compiler::Singlepass)
    }

    const BACKEND: Backend = Backend { name: "wasmer-singlepass", engine, frames: Frames::Wasm };

    wasmux_abi::backend_suite!(BACKEND);
}

const SPIN: &str = r#"(module (func (export "spin") (loop $l (br $l))))"#;

#[test]
fn engine_names_and_fingerprints_name_the_compiler() {
    let cranelift = engine_with(Compiler::Cranelift);
    let singlepass = engine_with(Compiler::Singlepass);
    assert_eq!((cranelift.name(), singlepass.name()), ("wasmer", "wasmer-singlepass"));
    let (a, b) = (cranelift.fingerprint(), singlepass.fingerprint());
    assert!(a.starts_with("wasmer-7.3.0-cranelift-"), "{a}");
    assert!(b.starts_with("wasmer-singlepass-7.3.0-singlepass-"), "{b}");
    let unoptimized = WasmerEngine::new(WasmerConfig::default().optimize(false)).unwrap().fingerprint();
    assert_ne!(a, unoptimized);
    // The metering rate paces checks; it does not change code.
    let paced = WasmerEngine::new(WasmerConfig::default().points_per_ms(7)).unwrap().fingerprint();
    assert_eq!(a, paced);
}

#[test]
fn hidden_imports_and_exports_stay_hidden() {
    for compiler in [Compiler::Cranelift, Compiler::Singlepass] {
        let engine = engine_with(compiler);
        let wat = r#"(module
          (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (table 2 funcref)
          (elem (i32.const 0) $a $b)
          (func $a (export "a") (result i32) (call_indirect (result i32) (i32.const 1)))
          (func $b (result i32) (i32.const 7))
          (func (export "ref") (result i32) (call $a)))"#;
        let m = engine.compile(&wat::parse_str(wat).unwrap()).unwrap();
        assert_eq!(m.imports().len(), 1);
        let names: Vec<_> = m.exports().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["memory", "a", "ref"]);
        // Defined functions moved up behind the hidden imports; calls, exports and tables
        // still reach the right ones.
        let mut vm = m.instantiate(wasmux_abi::HostState::for_tests(), &Limits::default()).unwrap();
        assert_eq!(call(&mut *vm, "a", &[]).unwrap(), Some(7));
        assert_eq!(call(&mut *vm, "ref", &[]).unwrap(), Some(7));
        assert!(vm.lookup("wasmux:points").is_none());
        // Names under the reserved prefix are refused.
        let reserved = r#"(module (func (export "wasmux:points")))"#;
        let err = engine.compile(&wat::parse_str(reserved).unwrap()).unwrap_err();
        assert!(matches!(err, Error::Compile { .. }), "{err:?}");
    }
}

/// The start function runs at instantiation, already under the instance's limits.
#[test]
fn start_function_runs_under_the_limits() {
    for compiler in [Compiler::Cranelift, Compiler::Singlepass] {
        let engine = engine_with(compiler);
        let spin = r#"(module (func $spin (loop $l (br $l))) (start $spin))"#;
        let m = engine.compile(&wat::parse_str(spin).unwrap()).unwrap();
        let limits = Limits { callback_deadline: Some(Duration::from_millis(20)), ..Limits::default() };
        let Err(Error::Trap(trap)) = m.instantiate(wasmux_abi::HostState::for_tests(), &limits) else {
            panic!("a start function that never returns was not stopped");
        };
        assert_eq!(trap.kind, TrapKind::Deadline, "{trap}");
        let grow = r#"(module (memory (export "memory") 1)
          (func $grow (if (i32.eq (memory.grow (i32.const 4)) (i32.const -1)) (then unreachable))) (start $grow))"#;
        let m = engine.compile(&wat::parse_str(grow).unwrap()).unwrap();
        let limits = Limits { max_memory_bytes: 2 * 65536, ..Limits::default() };
        let Err(Error::Trap(trap)) = m.instantiate(wasmux_abi::HostState::for_tests(), &limits) else {
            panic!("a start function grew memory past the limit");
        };
        assert_eq!(trap.kind, TrapKind::MemoryLimit, "{trap}");
        let mut vm = m.instantiate(wasmux_abi::HostState::for_tests(), &Limits::default()).unwrap();
        assert_eq!(vm.memory_size(), 5 * 65536);
    }
}

/// The table limit is a total over all tables, exact however the growths went: a growth a
/// table refuses by its own declared maximum is not counted, and a declared maximum far over
/// the limit (or over what wasmer itself accepts) is no obstacle to instantiation.
#[test]
fn table_limit_is_a_total_over_all_tables() {
    let wat = r#"(module
      (table $a 10 funcref)
      (table $b 10 20 funcref)
      (table $c 0 0xffffffff externref)
      (func (export "grow_a") (param i32) (result i32) (table.grow $a (ref.null func) (local.get 0)))
      (func (export "grow_b") (param i32) (result i32) (table.grow $b (ref.null func) (local.get 0)))
      (func (export "grow_c") (param i32) (result i32) (table.grow $c (ref.null extern) (local.get 0)))
      (func (export "size") (result i32)
        (i32.add (i32.add (table.size $a) (table.size $b)) (table.size $c))))"#;
    let bytes = wat::parse_str(wat).unwrap();
    for compiler in [Compiler::Cranelift, Compiler::Singlepass] {
        let engine = engine_with(compiler);
        let m = engine.compile(&bytes).unwrap();
        let limits = Limits { max_table_elements: 1_000, ..Limits::default() };
        let mut vm = m.instantiate(wasmux_abi::HostState::for_tests(), &limits).unwrap();
        let refused = Some(0xffff_ffff);
        assert_eq!(call(&mut *vm, "grow_a", &[900]).unwrap(), Some(10));
        // $b's own maximum refuses this one; it costs nothing.
        assert_eq!(call(&mut *vm, "grow_b", &[11]).unwrap(), refused);
        assert_eq!(call(&mut *vm, "grow_c", &[81]).unwrap(), refused);
        assert_eq!(call(&mut *vm, "grow_c", &[80]).unwrap(), Some(0));
        assert_eq!(call(&mut *vm, "grow_b", &[1]).unwrap(), refused);
        assert_eq!(call(&mut *vm, "grow_a", &[0]).unwrap(), Some(910));
        // A delta that would wrap, and the largest delta, on an empty table.
        assert_eq!(call(&mut *vm, "grow_c", &[u64::from(u32::MAX)]).unwrap(), refused);
        assert_eq!(call(&mut *vm, "size", &[]).unwrap(), Some(1_000));
        // Another instance of the same module has its own total.
        let limits = Limits { max_table_elements: u64::MAX, ..Limits::default() };
        let mut vm = m.instantiate(wasmux_abi::HostState::for_tests(), &limits).unwrap();
        assert_eq!(call(&mut *vm, "grow_c", &[u64::from(u32::MAX)]).unwrap(), refused);
        assert_eq!(call(&mut *vm, "grow_a", &[100_000]).unwrap(), Some(10));
        assert_eq!(call(&mut *vm, "size", &[]).unwrap(), Some(100_020));
    }
}

/// Measures what an empty loop burns per millisecond on each compiler, the basis of
/// `CRANELIFT_POINTS_PER_MS` and `SINGLEPASS_POINTS_PER_MS`, then how long a 100 ms deadline
/// takes at the default rates. Run it in release on an idle machine:
/// `cargo test --release -p wasmux-wasmer --test backend -- --ignored --nocapture points_rate`.
#[test]
#[ignore = "a measurement, not a test"]
fn points_rate() {
    // With a 1 ms deadline, the first slice is 1 ms worth of points at the configured rate;
    // the deadline is checked when it runs out. At an absurd rate, that slice is `POINTS`
    // points of spinning, and the call's wall time measures the real rate.
    const POINTS: u64 = 500_000_000;
    let limits = Limits { callback_deadline: Some(Duration::from_millis(1)), ..Limits::default() };
    for compiler in [Compiler::Cranelift, Compiler::Singlepass] {
        let engine = WasmerEngine::new(WasmerConfig::default().compiler(compiler).points_per_ms(POINTS)).unwrap();
        let m = engine.compile(&wat::parse_str(SPIN).unwrap()).unwrap();
        let mut best = f64::MAX;
        for _ in 0..5 {
            let mut vm = m.instantiate(wasmux_abi::HostState::for_tests(), &limits).unwrap();
            let start = Instant::now();
            let result = call(&mut *vm, "spin", &[]);
            best = best.min(start.elapsed().as_secs_f64() * 1e3);
            assert!(matches!(result, Err(Error::Trap(t)) if t.kind == TrapKind::Deadline));
        }
        println!(
            "{}: empty loop: {:.0} points/ms ({POINTS} points in {best:.1} ms)",
            engine.name(),
            POINTS as f64 / best
        );
        let engine = engine_with(compiler);
        let m = engine.compile(&wat::parse_str(SPIN).unwrap()).unwrap();
        let limits = Limits { callback_deadline: Some(Duration::from_millis(100)), ..Limits::default() };
        let mut vm = m.instantiate(wasmux_abi::HostState::for_tests(), &limits).unwrap();
        let start = Instant::now();
        let result = call(&mut *vm, "spin", &[]);
        assert!(matches!(result, Err(Error::Trap(t)) if t.kind == TrapKind::Deadline));
        println!("{}: 100 ms deadline at the default rate stopped the loop after {:?}", engine.name(), start.elapsed());
    }
}
