//! The WAMR backend: the shared backend suite (with its one declared gap), then what only WAMR
//! has (its fixed table capacities, the deferred start function, the exports WAMR would run at
//! instantiation, the thread manager's auxiliary stack split).

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmux_abi::testsuite::{Backend, Frames, call, deadline};
use wasmux_abi::{Error, HostState, Limits, TrapKind, WasmEngine};
use wasmux_wamr::{WamrConfig, WamrEngine};

fn engine() -> Arc<dyn WasmEngine> {
    Arc::new(WamrEngine::new(WamrConfig::default()).expect("engine"))
}

/// WAMR records no frames in this build: backtraces list the exports the host called.
const BACKEND: Backend = Backend { name: "wamr", engine, frames: Frames::EntryPoints };

wasmux_abi::backend_suite!(BACKEND; gaps {
    table_growth_is_capped: "WAMR fixes each table's capacity at load time, max(1024, 2 x initial size) \
        capped by the declared maximum (WASM_TABLE_MAX_SIZE), so growth to 2010 elements fails under a limit of 2010",
});

#[test]
fn fingerprint_names_the_version() {
    let a = engine().fingerprint();
    assert!(a.starts_with("wamr-2.4.3-"), "{a}");
}

/// What the declared gap of the suite is, exactly: a table grows to WAMR's capacity and no
/// further, whatever the host's limit; the host's limit still refuses tables that start over it.
#[test]
fn tables_grow_to_wamr_capacity() {
    let wat = r#"(module
      (table $t (export "table") 10 funcref)
      (func (export "grow") (param i32) (result i32) (table.grow $t (ref.null func) (local.get 0))))"#;
    let mut vm = BACKEND.instance_with(wat, &Limits { max_table_elements: 1_000_000, ..Limits::default() });
    assert_eq!(call(&mut *vm, "grow", &[1014]).unwrap(), Some(10));
    assert_eq!(call(&mut *vm, "grow", &[1]).unwrap(), Some(0xffff_ffff));
    // A declared maximum below the capacity is the capacity.
    let wat = r#"(module
      (table $t 10 20 funcref)
      (func (export "grow") (param i32) (result i32) (table.grow $t (ref.null func) (local.get 0))))"#;
    let mut vm = BACKEND.instance(wat);
    assert_eq!(call(&mut *vm, "grow", &[11]).unwrap(), Some(0xffff_ffff));
    assert_eq!(call(&mut *vm, "grow", &[10]).unwrap(), Some(10));
}

/// A start function runs after instantiation, under the deadline: a spinning one is stopped,
/// one calling the host too, and one that returns has done its work before the first call.
#[test]
fn start_functions_run_under_the_deadline() {
    let spin = r#"(module (func $spin (loop $l (br $l))) (start $spin))"#;
    let host_loop = r#"(module
      (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
      (memory 2)
      (func $host_loop (loop $l (drop (call $random (i32.const 0) (i32.const 65536))) (br $l)))
      (start $host_loop))"#;
    for wat in [spin, host_loop] {
        let module = BACKEND.module(wat);
        let started = Instant::now();
        let result = module.instantiate(HostState::for_tests(), &deadline(50)).map(|_| None);
        assert_eq!(BACKEND.trap_kind(result), TrapKind::Deadline);
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }
    let counted = r#"(module
      (global $g (mut i32) (i32.const 1))
      (func $init (global.set $g (i32.add (global.get $g) (i32.const 41))))
      (func (export "get") (result i32) (global.get $g))
      (start $init))"#;
    let mut vm = BACKEND.instance(counted);
    assert_eq!(call(&mut *vm, "get", &[]).unwrap(), Some(42));
    // The start function is no export of the module.
    assert!(BACKEND.module(counted).exports().iter().all(|e| e.name == "get"));
    assert!(vm.lookup("wasmux:wamr:start").is_none());
}

/// WAMR would run `__wasm_call_ctors` and `__post_instantiate` while instantiating; they are
/// ordinary exports here, run only when the host calls them.
#[test]
fn constructor_exports_are_not_run_at_instantiation() {
    let wat = r#"(module
      (global $g (mut i32) (i32.const 0))
      (func (export "__wasm_call_ctors") (global.set $g (i32.add (global.get $g) (i32.const 1))))
      (func (export "__post_instantiate") (global.set $g (i32.add (global.get $g) (i32.const 10))))
      (func (export "get") (result i32) (global.get $g)))"#;
    let mut vm = BACKEND.instance(wat);
    assert_eq!(call(&mut *vm, "get", &[]).unwrap(), Some(0));
    call(&mut *vm, "__wasm_call_ctors", &[]).unwrap();
    call(&mut *vm, "__post_instantiate", &[]).unwrap();
    assert_eq!(call(&mut *vm, "get", &[]).unwrap(), Some(11));
}

/// A module laid out as toolchains do (a `__stack_pointer` global, `__heap_base` and
/// `__data_end` exported) gets its whole 64 KiB shadow stack, although WAMR's thread manager
/// splits it between the instance and the threads it could spawn; and going past its bottom
/// is a stack overflow.
#[test]
fn auxiliary_stack_is_whole() {
    let wat = r#"(module
      (memory (export "memory") 2)
      (global $sp (mut i32) (i32.const 66560))
      (global (export "__data_end") i32 (i32.const 1024))
      (global (export "__heap_base") i32 (i32.const 66560))
      (func (export "take") (param $bytes i32) (result i32)
        (global.set $sp (i32.sub (global.get $sp) (local.get $bytes)))
        (i32.store (global.get $sp) (i32.const 7))
        (global.set $sp (i32.add (global.get $sp) (local.get $bytes)))
        (global.get $sp)))"#;
    let mut vm = BACKEND.instance(wat);
    // Most of the 64 KiB, far more than half of it.
    assert_eq!(call(&mut *vm, "take", &[60 << 10]).unwrap(), Some(66560));
    let r = call(&mut *vm, "take", &[65 << 10]);
    assert_eq!(BACKEND.trap_kind(r), TrapKind::StackOverflow);
    assert_eq!(call(&mut *vm, "take", &[16]).unwrap(), Some(66560));
}

/// A host function that fails after a re-entrant call it survived leaves no exception behind:
/// the next call of the instance runs normally.
#[test]
fn instance_is_clean_after_host_errors() {
    let (mut vm, root) = BACKEND.filter_vm(1, &Limits::default());
    assert!(matches!(root, Err(Error::Trap(_))));
    call(vm.instance(), "set_mode", &[0]).unwrap();
    let malloc = vm.instance().lookup("malloc").unwrap();
    assert_eq!(vm.instance().call(malloc, &[16]).unwrap(), Some(1024));
}

/// Engines share the process-wide runtime and host functions; each has its own watchdog.
#[test]
fn engines_are_independent() {
    let a = WamrEngine::new(WamrConfig::default().clock_tick(Duration::from_millis(2))).unwrap();
    let b = WamrEngine::new(WamrConfig::default()).unwrap();
    let spin = r#"(module (func (export "spin") (loop $l (br $l))))"#;
    let bytes = wat::parse_str(spin).unwrap();
    for e in [&a, &b] {
        let m = e.compile(&bytes).unwrap();
        let mut vm = m.instantiate(HostState::for_tests(), &deadline(10)).unwrap();
        assert_eq!(BACKEND.trap_kind(call(&mut *vm, "spin", &[])), TrapKind::Deadline);
    }
    drop(a);
    let m = b.compile(&bytes).unwrap();
    let mut vm = m.instantiate(HostState::for_tests(), &deadline(10)).unwrap();
    assert_eq!(BACKEND.trap_kind(call(&mut *vm, "spin", &[])), TrapKind::Deadline);
}
