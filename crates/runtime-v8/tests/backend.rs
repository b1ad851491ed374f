//! The V8 backend against hand-written modules.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmux_abi::{
    Error, ExternType, FuncRef, HostState, Limits, TrapKind, ValType, WasmEngine, WasmInstance, WasmModule,
};
use wasmux_v8::{V8Config, V8Engine};

const PAGE: u64 = 65536;

fn engine() -> V8Engine {
    V8Engine::new(V8Config::default()).expect("engine")
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
            assert_eq!(trap.engine, "v8");
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
    assert!(matches!(err, Error::Compile { engine: "v8", .. }), "{err:?}");
}

#[test]
fn unknown_import_fails_at_instantiation() {
    let m = module(r#"(module (import "env" "no_such_host_function" (func)))"#);
    let Err(err) = m.instantiate(HostState::for_tests(), &Limits::default()) else {
        panic!("instantiated a module with an unknown import");
    };
    assert!(matches!(err, Error::Engine { engine: "v8", .. }), "{err:?}");
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
fn fingerprint_is_stable() {
    let a = engine().fingerprint();
    assert!(a.starts_with(&format!("v8-{}-", wasmux_v8::V8_VERSION)), "{a}");
    assert!(a.starts_with("v8-10.2."), "{a}");
    assert_eq!(a, engine().fingerprint());
    assert!(V8Engine::v8_version().starts_with("10.2."));
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
    ;; mode 3: grow memory and allocate in the new page (the host must see the grown memory)
    (if (i32.eq (global.get $mode) (i32.const 3))
      (then (return (i32.mul (memory.grow (i32.const 1)) (i32.const 65536)))))
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

#[test]
fn host_writes_into_memory_grown_by_a_reentrant_call() {
    let (mut vm, root) = filter_vm(3, &Limits::default());
    root.expect("start_plugin");
    let inst = vm.instance();
    assert_eq!(inst.memory_size(), 2 * PAGE);
    let mut out = [0u8; 8];
    inst.read(0, &mut out).unwrap();
    let ptr = u32::from_le_bytes(out[..4].try_into().unwrap());
    assert_eq!(u64::from(ptr), PAGE);
    let mut name = [0u8; 9];
    inst.read(u64::from(ptr), &mut name).unwrap();
    assert_eq!(&name, b"my-plugin");
}

#[test]
fn isolate_is_usable_after_termination() {
    let wat = r#"(module
      (func (export "spin") (loop $l (br $l)))
      (func (export "one") (result i32) i32.const 1))"#;
    let limits = Limits { callback_deadline: Some(Duration::from_millis(10)), ..Limits::default() };
    let mut vm = instance_with(wat, &limits);
    for _ in 0..3 {
        assert_eq!(trap_kind(call(&mut *vm, "spin", &[])), TrapKind::Deadline);
        assert_eq!(call(&mut *vm, "one", &[]).unwrap(), Some(1));
    }
    // Interrupting an idle instance does not poison its next call.
    (vm.interrupt_handle())();
    assert_eq!(call(&mut *vm, "one", &[]).unwrap(), Some(1));
}

const COUNTER: &str = r#"(module (memory (export "memory") 1)
  (func (export "set") (param i32) (i32.store (i32.const 0) (local.get 0)))
  (func (export "get") (result i32) (i32.load (i32.const 0))))"#;

#[test]
fn instances_move_between_threads() {
    let m = module(COUNTER);
    let new = || m.instantiate(HostState::for_tests(), &Limits::default()).unwrap();
    let mut a = new();
    call(&mut *a, "set", &[1]).unwrap();
    // Used on another thread while this one keeps it entered, then back here.
    let mut a = std::thread::spawn(move || {
        assert_eq!(call(&mut *a, "get", &[]).unwrap(), Some(1));
        call(&mut *a, "set", &[2]).unwrap();
        a
    })
    .join()
    .unwrap();
    assert_eq!(call(&mut *a, "get", &[]).unwrap(), Some(2));

    // Used on another thread while this thread switches to another instance (and so lets go
    // of the first one, possibly while the other thread is in a call).
    let mut b = new();
    let worker = std::thread::spawn(move || {
        for i in 0..2000 {
            call(&mut *a, "set", &[i]).unwrap();
        }
        a
    });
    for i in 0..2000 {
        call(&mut *b, "set", &[i + 7]).unwrap();
    }
    let mut a = worker.join().unwrap();
    assert_eq!(call(&mut *a, "get", &[]).unwrap(), Some(1999));
    assert_eq!(call(&mut *b, "get", &[]).unwrap(), Some(2006));

    // Created and entered on a thread that exits; used here afterwards.
    let mut c = std::thread::spawn({
        let m = m.clone();
        move || {
            let mut c = m.instantiate(HostState::for_tests(), &Limits::default()).unwrap();
            call(&mut *c, "set", &[5]).unwrap();
            c
        }
    })
    .join()
    .unwrap();
    assert_eq!(call(&mut *c, "get", &[]).unwrap(), Some(5));

    // Dropped on another thread while this one keeps it entered, then this thread moves on.
    call(&mut *a, "get", &[]).unwrap();
    std::thread::spawn(move || drop(a)).join().unwrap();
    assert_eq!(call(&mut *b, "get", &[]).unwrap(), Some(2006));
    drop((b, c));
}

#[test]
fn many_instances_on_one_thread() {
    let m = module(COUNTER);
    let mut vms: Vec<_> = (0..8).map(|_| m.instantiate(HostState::for_tests(), &Limits::default()).unwrap()).collect();
    for round in 0..50u64 {
        for (i, vm) in vms.iter_mut().enumerate() {
            call(&mut **vm, "set", &[round * 10 + i as u64]).unwrap();
        }
    }
    for (i, vm) in vms.iter_mut().enumerate() {
        assert_eq!(call(&mut **vm, "get", &[]).unwrap(), Some(490 + i as u64));
    }
}

#[test]
fn stack_overflow_on_a_small_thread_stack() {
    let wat = r#"(module
      (func $rec (export "recurse") (param i32) (result i32) (call $rec (i32.add (local.get 0) (i32.const 1)))))"#;
    let m = module(wat);
    // The instance asks for more stack than the thread has: the limit stays inside the thread.
    let limits = Limits { max_stack_bytes: 64 << 20, ..Limits::default() };
    let mut vm = m.instantiate(HostState::for_tests(), &limits).unwrap();
    let vm = std::thread::Builder::new()
        .stack_size(512 << 10)
        .spawn(move || {
            assert_eq!(trap_kind(call(&mut *vm, "recurse", &[0])), TrapKind::StackOverflow);
            vm
        })
        .unwrap()
        .join()
        .unwrap();
    drop(vm);
}

#[test]
fn refused_growth_is_attributed_precisely() {
    let wat = r#"(module
      (memory (export "memory") 1 1000)
      (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
      (func (export "boom") unreachable)
      (func (export "grow_or_die") (param i32)
        (loop $l (br_if $l (i32.ne (memory.grow (local.get 0)) (i32.const -1))))
        unreachable))"#;
    let limits = Limits { max_memory_bytes: 64 * PAGE, ..Limits::default() };
    let mut vm = instance_with(wat, &limits);
    // Growth by 16 pages is refused at 49 pages, well below the limit of 64.
    assert_eq!(trap_kind(call(&mut *vm, "grow_or_die", &[16])), TrapKind::MemoryLimit);
    assert_eq!(vm.memory_size(), 49 * PAGE);
    // A refusal the guest survived does not taint a later, unrelated trap.
    assert_eq!(call(&mut *vm, "grow", &[16]).unwrap(), Some(0xffff_ffff));
    assert_eq!(trap_kind(call(&mut *vm, "boom", &[])), TrapKind::Unreachable);

    // The module's own maximum is not the host's limit.
    let wat = r#"(module (memory (export "memory") 1 2)
      (func (export "grow_or_die") (loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable))"#;
    let mut vm = instance(wat);
    assert_eq!(trap_kind(call(&mut *vm, "grow_or_die", &[])), TrapKind::Unreachable);
}

#[test]
fn host_sees_growth_between_host_calls() {
    // `proxy_get_current_time_nanoseconds(ptr)` writes 8 bytes at `ptr` (status 0 when in
    // bounds). The guest makes the host read the memory view, grows memory, then has the host
    // write past the old end.
    let wat = r#"(module
      (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "probe") (result i32)
        (drop (call $now (i32.const 8)))
        (drop (memory.grow (i32.const 1)))
        (call $now (i32.sub (i32.mul (memory.size) (i32.const 65536)) (i32.const 8)))))"#;
    let mut vm = instance(wat);
    for pages in 2..5 {
        assert_eq!(call(&mut *vm, "probe", &[]).unwrap(), Some(0));
        assert_eq!(vm.memory_size(), pages * PAGE);
        let mut out = [0u8; 8];
        vm.read(pages * PAGE - 8, &mut out).unwrap();
        assert_ne!(out, [0; 8]);
    }
}

#[test]
fn instance_in_a_thread_local_is_dropped_at_thread_exit() {
    use std::cell::RefCell;
    thread_local! {
        static VM: RefCell<Option<Box<dyn WasmInstance>>> = const { RefCell::new(None) };
    }
    let m = module(COUNTER);
    std::thread::spawn(move || {
        // The thread-local is registered first, so it is dropped after the bridge's own.
        VM.with(|vm| {
            let mut instance = m.instantiate(HostState::for_tests(), &Limits::default()).unwrap();
            call(&mut *instance, "set", &[3]).unwrap();
            *vm.borrow_mut() = Some(instance);
        });
        VM.with(|vm| assert_eq!(call(&mut **vm.borrow_mut().as_mut().unwrap(), "get", &[]).unwrap(), Some(3)));
    })
    .join()
    .unwrap();
}
