//! The V8 backend: the shared backend suite, then what only V8 has (its version in the
//! fingerprint, isolates kept in thread-locals, the module rewrite, V8's interrupt checks).

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmux_abi::testsuite::{Backend, Frames, call, deadline};
use wasmux_abi::{Error, HostState, Limits, TrapKind, WasmEngine, WasmInstance};
use wasmux_v8::{V8Config, V8Engine};

fn engine() -> Arc<dyn WasmEngine> {
    Arc::new(V8Engine::new(V8Config::default()).expect("engine"))
}

const BACKEND: Backend = Backend { name: "v8", engine, frames: Frames::Wasm };

wasmux_abi::backend_suite!(BACKEND);

#[test]
fn fingerprint_names_the_v8_version() {
    let a = engine().fingerprint();
    assert!(a.starts_with(&format!("v8-{}-", wasmux_v8::V8_VERSION)), "{a}");
    assert!(a.starts_with("v8-10.2."), "{a}");
    assert!(V8Engine::v8_version().starts_with("10.2."));
}

#[test]
fn instance_in_a_thread_local_is_dropped_at_thread_exit() {
    use std::cell::RefCell;
    thread_local! {
        static VM: RefCell<Option<Box<dyn WasmInstance>>> = const { RefCell::new(None) };
    }
    let m = BACKEND.module(
        r#"(module (memory (export "memory") 1)
      (func (export "set") (param i32) (i32.store (i32.const 0) (local.get 0)))
      (func (export "get") (result i32) (i32.load (i32.const 0))))"#,
    );
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

/// The rewrite appends a table (the memory growth hook) and a global (the table budget). A
/// module that uses a table or global it never declares must not pick those up: it is refused
/// at compile, before the rewrite sees it.
#[test]
fn undeclared_tables_and_globals_are_refused_at_compile() {
    let grows = "(func (drop (memory.grow (i32.const 1))))";
    let attacks = [
        "(type $t (func)) (func (call_indirect (type $t) (i32.const 0)))",
        "(func (table.set 0 (i32.const 0) (ref.null func)))",
        "(func (drop (table.get 0 (i32.const 0))))",
        "(func (drop (table.size 0)))",
        "(func (table.fill 0 (i32.const 0) (ref.null func) (i32.const 1)))",
        "(func (drop (table.grow 0 (ref.null func) (i32.const 1))))",
        // The budget global is appended once the module grows a table.
        "(table 1 funcref) (func (drop (table.grow 0 (ref.null func) (i32.const 1)))) (func (global.set 0 (i32.const -1)))",
        "(func (global.set 0 (i32.const -1)))",
    ];
    for attack in attacks {
        let wat = format!("(module (memory 1) {grows} {attack})");
        let bytes = wat::parse_str(&wat).expect("wat");
        match engine().compile(&bytes) {
            Err(Error::Compile { engine, .. }) => assert_eq!(engine, "v8", "{wat}"),
            other => panic!("{wat}: expected a compile error, got {other:?}"),
        }
    }
}

/// V8 10.2's Liftoff code checks for interrupts at loop back-edges only when the tiering budget
/// runs out, unless dynamic tiering is off: a loop of bulk memory operations (cheap in wasm
/// instructions, slow in the runtime) must still stop at its deadline, in Liftoff code and
/// once tiered up.
#[test]
fn deadline_stops_loops_of_bulk_memory_operations() {
    let wat = r#"(module (memory 1024)
      (func (export "fill_loop") (loop $l (memory.fill (i32.const 0) (i32.const 1) (i32.const 67108864)) (br $l))))"#;
    let m = BACKEND.module(wat);
    for wait in [Duration::ZERO, Duration::from_millis(500)] {
        let mut vm = m.instantiate(HostState::for_tests(), &deadline(100)).unwrap();
        std::thread::sleep(wait);
        let started = Instant::now();
        assert_eq!(BACKEND.trap_kind(call(&mut *vm, "fill_loop", &[])), TrapKind::Deadline);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "a 100 ms deadline stopped the call after {took:?}");
    }
}

/// The start function runs once the hooks are installed: its table growth counts against
/// the limit, and its memory growth is seen by the host.
#[test]
fn start_function_runs_under_the_limits() {
    let wat = r#"(module
      (memory (export "memory") 1)
      (table 10 funcref)
      (global $grown (mut i32) (i32.const 0))
      (global $pages (mut i32) (i32.const 0))
      (func $start
        (global.set $grown (table.grow 0 (ref.null func) (i32.const 5)))
        (global.set $pages (memory.grow (i32.const 1))))
      (start $start)
      (func (export "grown") (result i32) (global.get $grown))
      (func (export "pages") (result i32) (global.get $pages)))"#;
    let m = BACKEND.module(wat);
    let mut vm = m.instantiate(HostState::for_tests(), &Limits::default()).unwrap();
    assert_eq!(call(&mut *vm, "grown", &[]).unwrap(), Some(10));
    assert_eq!(call(&mut *vm, "pages", &[]).unwrap(), Some(1));
    assert_eq!(vm.memory_size(), 2 * 65536);
    let limits = Limits { max_table_elements: 12, ..Limits::default() };
    let mut vm = m.instantiate(HostState::for_tests(), &limits).unwrap();
    assert_eq!(call(&mut *vm, "grown", &[]).unwrap(), Some(0xffff_ffff));
}

/// Tables past the default limit are refused before V8 allocates them (a 10-million-element
/// table used to exhaust the isolate's heap, and V8 aborts the process then); raising the
/// limit makes room for them in the heap.
#[test]
fn huge_tables_are_refused_or_fit_the_heap() {
    let m = BACKEND.module("(module (table 10000000 funcref) (table 0 externref))");
    assert!(matches!(m.instantiate(HostState::for_tests(), &Limits::default()), Err(Error::Engine { .. })));
    let limits = Limits { max_table_elements: 10_000_000, ..Limits::default() };
    assert!(m.instantiate(HostState::for_tests(), &limits).is_ok());
}
