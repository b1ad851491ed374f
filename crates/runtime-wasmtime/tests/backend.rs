//! The wasmtime backend against hand-written modules.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmux_abi::{
    Error, ExternType, FuncRef, HostState, Limits, TrapKind, ValType, WasmEngine, WasmInstance, WasmModule,
};
use wasmux_wasmtime::{WasmtimeConfig, WasmtimeEngine};

const PAGE: u64 = 65536;

fn engine() -> WasmtimeEngine {
    WasmtimeEngine::new(WasmtimeConfig::default()).expect("engine")
}

fn module(wat: &str) -> Arc<dyn WasmModule> {
    engine().compile(&wat::parse_str(wat).expect("wat")).expect("compile")
}

fn instance_with(wat: &str, limits: &Limits) -> Box<dyn WasmInstance> {
    module(wat).instantiate(HostState::for_tests(), limits).expect("instantiate")
}

fn instance(wat: &str) -> Box<dyn WasmInstance> {
    instance_with(wat, &Limits::default())
}

fn call(vm: &mut dyn WasmInstance, name: &str, args: &[u64]) -> Result<Option<u64>, Error> {
    let func = vm.lookup(name).unwrap_or_else(|| panic!("no export {name}"));
    vm.call(func, args)
}

fn trap_kind(result: Result<Option<u64>, Error>) -> TrapKind {
    match result {
        Err(Error::Trap(trap)) => {
            assert_eq!(trap.engine, "wasmtime");
            trap.kind
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

const ARITH: &str = r#"(module
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "add64") (param i64 i64) (result i64) (i64.add (local.get 0) (local.get 1)))
  (func (export "nothing") (param i32))
  (func (export "div") (param i32 i32) (result i32) (i32.div_s (local.get 0) (local.get 1))))"#;

#[test]
fn calls_exports_with_raw_values() {
    let mut vm = instance(ARITH);
    assert_eq!(call(&mut *vm, "add", &[2, 3]).unwrap(), Some(5));
    // i32 results come back zero-extended.
    assert_eq!(call(&mut *vm, "add", &[0, u64::from(-1i32 as u32)]).unwrap(), Some(0xffff_ffff));
    assert_eq!(call(&mut *vm, "add64", &[1 << 40, (-1i64) as u64]).unwrap(), Some((1 << 40) - 1));
    assert_eq!(call(&mut *vm, "nothing", &[7]).unwrap(), None);
    assert_eq!(call(&mut *vm, "div", &[9, 3]).unwrap(), Some(3));
    assert!(vm.lookup("missing").is_none());
    assert_eq!(vm.lookup("add"), vm.lookup("add"));
    assert!(matches!(vm.call(FuncRef(99), &[]), Err(Error::Engine { .. })));
    let add = vm.lookup("add").unwrap();
    assert!(matches!(vm.call(add, &[1]), Err(Error::Engine { .. })));
}

#[test]
fn describes_imports_and_exports() {
    let m = module(
        r#"(module
      (import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "f") (param i64) (result i32) i32.const 0))"#,
    );
    let imports = m.imports();
    assert_eq!(imports.len(), 1);
    assert_eq!((imports[0].module.as_str(), imports[0].name.as_str()), ("env", "proxy_log"));
    let names: Vec<_> = m.exports().iter().map(|e| (e.name.as_str(), e.ty.kind())).collect();
    assert_eq!(names, [("memory", "memory"), ("f", "function")]);
    match &m.exports()[1].ty {
        ExternType::Func(ty) => assert!(ty.is(&[ValType::I64], &[ValType::I32])),
        other => panic!("{other:?}"),
    }
}

#[test]
fn compile_errors_are_reported() {
    let err = engine().compile(b"\0asm\x01\0\0\0garbage").unwrap_err();
    assert!(matches!(err, Error::Compile { engine: "wasmtime", .. }), "{err:?}");
}

#[test]
fn unknown_import_fails_at_instantiation() {
    let m = module(r#"(module (import "env" "no_such_host_function" (func)))"#);
    let Err(err) = m.instantiate(HostState::for_tests(), &Limits::default()) else {
        panic!("instantiated a module with an unknown import");
    };
    assert!(matches!(err, Error::Engine { engine: "wasmtime", .. }), "{err:?}");
}

#[test]
fn reads_memory() {
    let mut vm = instance(r#"(module (memory (export "memory") 1) (data (i32.const 8) "hello"))"#);
    assert_eq!(vm.memory_size(), PAGE);
    let mut buf = [0u8; 5];
    vm.read(8, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    assert!(vm.read(PAGE - 2, &mut buf).is_err());
    assert!(vm.read(u64::MAX, &mut buf).is_err());
    vm.read(PAGE, &mut []).unwrap();
}

#[test]
fn no_memory_export_reads_fail() {
    let mut vm = instance(r#"(module (memory 1))"#);
    assert_eq!(vm.memory_size(), 0);
    assert!(vm.read(0, &mut [0u8; 1]).is_err());
}

#[test]
fn traps_are_normalized() {
    let mut vm = instance(
        r#"(module
      (memory 1)
      (func $boom (export "unreachable") unreachable)
      (func (export "via") call $boom)
      (func (export "oob") (result i32) (i32.load (i32.const 65536)))
      (func (export "div0") (result i32) (i32.div_u (i32.const 1) (i32.const 0)))
      (func $rec (export "recurse") (param i32) (result i32) (call $rec (i32.add (local.get 0) (i32.const 1)))))"#,
    );
    assert_eq!(trap_kind(call(&mut *vm, "unreachable", &[])), TrapKind::Unreachable);
    assert_eq!(trap_kind(call(&mut *vm, "oob", &[])), TrapKind::OutOfBounds);
    assert_eq!(trap_kind(call(&mut *vm, "div0", &[])), TrapKind::Arithmetic);
    assert_eq!(trap_kind(call(&mut *vm, "recurse", &[0])), TrapKind::StackOverflow);
    // The instance stays usable after a trap, and the backtrace names the wasm functions.
    let Err(Error::Trap(trap)) = call(&mut *vm, "via", &[]) else { panic!("expected a trap") };
    assert_eq!(trap.kind, TrapKind::Unreachable);
    assert_eq!(trap.backtrace.first().map(String::as_str), Some("boom"), "{trap}");
    assert_eq!(trap.backtrace.len(), 2, "{trap}");
}

#[test]
fn arithmetic_traps() {
    let mut vm = instance(ARITH);
    assert_eq!(trap_kind(call(&mut *vm, "div", &[1, 0])), TrapKind::Arithmetic);
    assert_eq!(
        trap_kind(call(&mut *vm, "div", &[u64::from(i32::MIN as u32), u64::from(-1i32 as u32)])),
        TrapKind::Arithmetic
    );
}

const SPIN: &str = r#"(module (func (export "spin") (loop $l (br $l))))"#;

#[test]
fn deadline_stops_infinite_loop() {
    let limits = Limits { callback_deadline: Some(Duration::from_millis(20)), ..Limits::default() };
    let mut vm = instance_with(SPIN, &limits);
    assert_eq!(trap_kind(call(&mut *vm, "spin", &[])), TrapKind::Deadline);
    // Each top-level call gets a fresh deadline.
    assert_eq!(trap_kind(call(&mut *vm, "spin", &[])), TrapKind::Deadline);
}

#[test]
fn interrupt_from_another_thread() {
    let limits = Limits { callback_deadline: None, ..Limits::default() };
    let mut vm = instance_with(SPIN, &limits);
    let interrupt = vm.interrupt_handle();
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            // Keep interrupting until the call is over: the first request may come before it
            // starts (a top-level call clears stale requests).
            while !done.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5));
                interrupt();
            }
        })
    };
    let result = call(&mut *vm, "spin", &[]);
    done.store(true, Ordering::Release);
    watchdog.join().unwrap();
    assert_eq!(trap_kind(result), TrapKind::Deadline);
}

const GROW: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "grow_or_die") (param i32)
    (if (i32.eq (memory.grow (local.get 0)) (i32.const -1)) (then unreachable))))"#;

#[test]
fn memory_growth_is_capped() {
    let limits = Limits { max_memory_bytes: 2 * PAGE, ..Limits::default() };
    let mut vm = instance_with(GROW, &limits);
    assert_eq!(call(&mut *vm, "grow", &[1]).unwrap(), Some(1));
    assert_eq!(vm.memory_size(), 2 * PAGE);
    assert_eq!(call(&mut *vm, "grow", &[1]).unwrap(), Some(0xffff_ffff));
    assert_eq!(vm.memory_size(), 2 * PAGE);
    assert_eq!(trap_kind(call(&mut *vm, "grow_or_die", &[1])), TrapKind::MemoryLimit);
    // A later trap without a refused growth is the guest's own.
    assert_eq!(call(&mut *vm, "grow", &[0]).unwrap(), Some(2));
}

#[test]
fn initial_memory_over_limit_fails_instantiation() {
    let m = module(r#"(module (memory (export "memory") 4))"#);
    let limits = Limits { max_memory_bytes: 2 * PAGE, ..Limits::default() };
    assert!(m.instantiate(HostState::for_tests(), &limits).is_err());
}

#[test]
fn instances_have_independent_memories() {
    let m = module(
        r#"(module (memory (export "memory") 1)
      (func (export "set") (param i32) (i32.store (i32.const 0) (local.get 0)))
      (func (export "get") (result i32) (i32.load (i32.const 0))))"#,
    );
    let mut a = m.instantiate(HostState::for_tests(), &Limits::default()).unwrap();
    let mut b = m.instantiate(HostState::for_tests(), &Limits::default()).unwrap();
    call(&mut *a, "set", &[42]).unwrap();
    assert_eq!(call(&mut *a, "get", &[]).unwrap(), Some(42));
    assert_eq!(call(&mut *b, "get", &[]).unwrap(), Some(0));
    let mut word = [0u8; 4];
    a.read(0, &mut word).unwrap();
    assert_eq!(u32::from_le_bytes(word), 42);
}

#[test]
fn fingerprint_is_stable_and_config_dependent() {
    let a = engine().fingerprint();
    assert!(a.starts_with("wasmtime-48.0.8-"), "{a}");
    assert_eq!(a, engine().fingerprint());
    let b = WasmtimeEngine::new(WasmtimeConfig::default().max_stack_bytes(512 << 10)).unwrap().fingerprint();
    assert_ne!(a, b);
}

#[test]
fn serialized_modules_load_on_engines_with_the_same_settings_only() {
    let wat = r#"(module (memory (export "memory") 1)
      (global $g (mut i32) (i32.const 40))
      (func (export "add") (param i32) (result i32) (global.set $g (i32.add (global.get $g) (local.get 0))) (global.get $g)))"#;
    let a = engine();
    let artifact = a.serialize(&*a.compile(&wat::parse_str(wat).unwrap()).unwrap()).expect("serializes");
    // Another engine instance with the same settings loads it: same fingerprint.
    let b = engine();
    assert_eq!(a.fingerprint(), b.fingerprint());
    let m = b.deserialize(&artifact).expect("deserializes");
    assert!(m.exports().iter().any(|e| e.name == "add"));
    let mut vm = m.instantiate(HostState::for_tests(), &Limits::default()).unwrap();
    assert_eq!(call(&mut *vm, "add", &[2]).unwrap(), Some(42));
    // Other settings, another fingerprint (so another cache key), even where wasmtime would
    // accept the code; and wasmtime refuses what is not an artifact.
    let unoptimized = WasmtimeEngine::new(WasmtimeConfig::default().optimize(false)).unwrap();
    assert_ne!(a.fingerprint(), unoptimized.fingerprint());
    assert!(matches!(a.deserialize(b"not an artifact"), Err(Error::Engine { engine: "wasmtime", .. })));
    // A module of another engine instance is not serialized through this one.
    let other = unoptimized.compile(&wat::parse_str(wat).unwrap()).unwrap();
    assert!(a.serialize(&*other).is_none());
}

/// A minimal proxy-wasm filter: `proxy_on_configure` reads `plugin_name` through
/// `proxy_get_property`, which calls back into `malloc` (a re-entrant call). `set_mode` makes
/// `malloc` trap (1) or spin (2).
const FILTER: &str = r#"(module
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $mode (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const 1024))
  (data (i32.const 16) "plugin_name")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "set_mode") (param i32) (global.set $mode (local.get 0)))
  (func $malloc (export "malloc") (param i32) (result i32)
    (local $p i32)
    (if (i32.eq (global.get $mode) (i32.const 1)) (then unreachable))
    (if (i32.eq (global.get $mode) (i32.const 2)) (then (loop $spin (br $spin))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get 0)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func $on_configure (export "proxy_on_configure") (param i32 i32) (result i32)
    (i32.eqz (call $get_property (i32.const 16) (i32.const 11) (i32.const 0) (i32.const 4)))))"#;

fn filter_vm(mode: u64, limits: &Limits) -> (wasmux_abi::Vm, Result<u32, Error>) {
    let m = module(FILTER);
    let mut vm = wasmux_abi::Vm::new(&*m, wasmux_abi::AbiVersion::V0_2_1, Arc::default(), limits).expect("vm");
    call(vm.instance(), "set_mode", &[mode]).unwrap();
    let plugin = wasmux_abi::PluginConfig { name: "my-plugin".into(), ..Default::default() };
    let root = vm.start_plugin(Arc::new(plugin));
    (vm, root)
}

#[test]
fn host_function_calls_back_into_the_guest() {
    let (mut vm, root) = filter_vm(0, &Limits::default());
    root.expect("start_plugin");
    let inst = vm.instance();
    let mut out = [0u8; 8];
    inst.read(0, &mut out).unwrap();
    let ptr = u32::from_le_bytes(out[..4].try_into().unwrap());
    let len = u32::from_le_bytes(out[4..].try_into().unwrap());
    assert_eq!((ptr, len), (1024, 9));
    let mut name = [0u8; 9];
    inst.read(u64::from(ptr), &mut name).unwrap();
    assert_eq!(&name, b"my-plugin");
}

#[test]
fn trap_in_reentrant_call_ends_the_outer_call() {
    let (_vm, root) = filter_vm(1, &Limits::default());
    let Err(Error::Trap(trap)) = root else { panic!("expected a trap, got {root:?}") };
    assert_eq!(trap.kind, TrapKind::Unreachable, "{trap}");
    assert_eq!(trap.backtrace.first().map(String::as_str), Some("malloc"), "{trap}");
}

#[test]
fn deadline_covers_reentrant_calls() {
    let limits = Limits { callback_deadline: Some(Duration::from_millis(20)), ..Limits::default() };
    let (_vm, root) = filter_vm(2, &limits);
    let Err(Error::Trap(trap)) = root else { panic!("expected a trap, got {root:?}") };
    assert_eq!(trap.kind, TrapKind::Deadline, "{trap}");
}

#[test]
fn dynamic_host_function_path() {
    // `clock_time_get` takes an i64, so it is linked through `func_new` rather than a typed
    // trampoline; also reachable under the `wasi_unstable` name.
    let wat = |module: &str| {
        format!(
            r#"(module
          (import "{module}" "clock_time_get" (func $now (param i32 i64 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "now") (param i32) (result i32) (call $now (i32.const 0) (i64.const 1) (local.get 0))))"#
        )
    };
    for module in ["wasi_snapshot_preview1", "wasi_unstable"] {
        let mut vm = instance(&wat(module));
        assert_eq!(call(&mut *vm, "now", &[8]).unwrap(), Some(0));
        let mut out = [0u8; 8];
        vm.read(8, &mut out).unwrap();
        assert_ne!(u64::from_le_bytes(out), 0);
        // A bad pointer is the guest's problem (EFAULT), not a trap.
        assert_ne!(call(&mut *vm, "now", &[u64::from(u32::MAX)]).unwrap(), Some(0));
    }
}
