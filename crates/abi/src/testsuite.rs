//! The behaviour every sandboxed backend owes the ABI layer, as one test suite (feature
//! `testsuite`).
//!
//! Each backend crate runs it against its own engine from `tests/backend.rs`, next to the few
//! tests that only make sense for that engine (its settings, its fingerprint format):
//!
//! ```ignore
//! fn engine() -> Arc<dyn WasmEngine> {
//!     Arc::new(MyEngine::new(MyConfig::default()).expect("engine"))
//! }
//!
//! const BACKEND: Backend = Backend { name: "my-engine", engine, frames: Frames::Wasm };
//!
//! wasmux_abi::backend_suite!(BACKEND);
//! ```
//!
//! The suite drives engines only through the [`WasmEngine`] traits, with hand-written modules,
//! so a new backend learns here, before the conformance suite runs SDK filters on it, whether
//! raw values, traps, limits, re-entrant calls and threads behave as the ABI layer expects.

#![allow(clippy::unwrap_used, reason = "test code: a failed step is a failed test")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{
    AbiVersion, Error, ExternType, FuncRef, HostState, Limits, PluginConfig, TrapKind, ValType, Vm, WasmEngine,
    WasmInstance, WasmModule,
};

/// One wasm page.
pub const PAGE: u64 = 65536;

/// What a trap's backtrace lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frames {
    /// Every wasm frame, innermost first, named from the name section.
    Wasm,
    /// Only the exports the host called (innermost first): interpreters that record no frames.
    EntryPoints,
}

/// A backend under test.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    /// The engine name errors and traps carry.
    pub name: &'static str,
    /// Makes an engine with default settings.
    pub engine: fn() -> Arc<dyn WasmEngine>,
    /// What trap backtraces list.
    pub frames: Frames,
}

impl Backend {
    /// Compiles a WAT module.
    ///
    /// # Panics
    /// When the text or the compile fails.
    pub fn module(&self, wat: &str) -> Arc<dyn WasmModule> {
        (self.engine)().compile(&wat::parse_str(wat).expect("wat")).expect("compile")
    }

    /// Instantiates a WAT module with `limits`.
    ///
    /// # Panics
    /// When any step fails.
    pub fn instance_with(&self, wat: &str, limits: &Limits) -> Box<dyn WasmInstance> {
        self.module(wat).instantiate(HostState::for_tests(), limits).expect("instantiate")
    }

    /// Instantiates a WAT module with the default limits.
    ///
    /// # Panics
    /// When any step fails.
    pub fn instance(&self, wat: &str) -> Box<dyn WasmInstance> {
        self.instance_with(wat, &Limits::default())
    }

    /// The kind of the trap `result` holds, checking that this engine raised it.
    ///
    /// # Panics
    /// When `result` is not a trap of this engine.
    #[track_caller]
    pub fn trap_kind(&self, result: crate::Result<Option<u64>>) -> TrapKind {
        match result {
            Err(Error::Trap(trap)) => {
                assert_eq!(trap.engine, self.name, "{trap}");
                trap.kind
            }
            other => panic!("expected a trap, got {other:?}"),
        }
    }

    /// A proxy-wasm VM on [`FILTER`] with its allocator in `mode` (0 works, 1 traps, 2 spins,
    /// 3 grows memory and allocates in the new page), after `start_plugin`.
    ///
    /// # Panics
    /// When the VM cannot be made.
    pub fn filter_vm(&self, mode: u64, limits: &Limits) -> (Vm, crate::Result<u32>) {
        let m = self.module(FILTER);
        let mut vm = Vm::new(&*m, AbiVersion::V0_2_1, Arc::default(), limits).expect("vm");
        call(vm.instance(), "set_mode", &[mode]).expect("set_mode");
        let plugin = PluginConfig { name: "my-plugin".into(), ..Default::default() };
        let root = vm.start_plugin(Arc::new(plugin));
        (vm, root)
    }
}

/// Calls an export by name.
///
/// # Panics
/// When there is no such export.
pub fn call(vm: &mut dyn WasmInstance, name: &str, args: &[u64]) -> crate::Result<Option<u64>> {
    let func = vm.lookup(name).unwrap_or_else(|| panic!("no export {name}"));
    vm.call(func, args)
}

/// Limits with a callback deadline of `ms` milliseconds.
pub fn deadline(ms: u64) -> Limits {
    Limits { callback_deadline: Some(Duration::from_millis(ms)), ..Limits::default() }
}

/// Defines one `#[test]` per suite function for a [`Backend`] constant.
///
/// An engine that cannot meet a test declares it as a gap, with the reason:
///
/// ```ignore
/// wasmux_abi::backend_suite!(BACKEND; gaps {
///     table_growth_is_capped: "why this engine cannot pass it",
/// });
/// ```
///
/// A gap's test passes only if the suite function *fails*: a declared gap that passes fails
/// the run, so the list can only shrink (as with the conformance suite's gaps). A gap that
/// names no suite test fails too.
#[macro_export]
macro_rules! backend_suite {
    ($backend:expr) => {
        $crate::backend_suite!($backend; gaps {});
    };
    ($backend:expr; gaps { $($gap:ident: $reason:literal),* $(,)? }) => {
        $crate::backend_suite!(@each $backend; &[$((stringify!($gap), $reason)),*];
            calls_exports_with_raw_values, describes_imports_and_exports, compile_errors_are_reported,
            unknown_import_fails_at_instantiation, reads_memory, no_memory_export_reads_fail,
            traps_are_normalized, arithmetic_traps, deadline_stops_infinite_loop,
            usable_after_deadline, interrupt_from_another_thread, memory_growth_is_capped,
            initial_memory_over_limit_fails_instantiation, refused_growth_is_attributed_precisely,
            instances_have_independent_memories, fingerprint_is_stable, serialized_modules_round_trip,
            host_function_calls_back_into_the_guest, trap_in_reentrant_call_ends_the_outer_call,
            deadline_covers_reentrant_calls, reentrant_calls_do_not_refuel, dynamic_host_function_path,
            host_writes_into_memory_grown_by_a_reentrant_call, host_sees_growth_between_host_calls,
            instances_move_between_threads, many_instances_on_one_thread,
            stack_overflow_on_a_small_thread_stack, table_growth_is_capped,
            initial_tables_over_limit_fail_instantiation, invalid_modules_are_refused_alike,
            deadline_counts_host_time, no_deadline_means_none, deadline_waits_for_its_time,
            snapshots_carry_memory_and_globals,
        );
    };
    (@each $backend:expr; $gaps:expr; $($name:ident,)*) => {
        $(
            #[test]
            fn $name() {
                $crate::testsuite::run(&$backend, stringify!($name), $gaps, $crate::testsuite::$name)
            }
        )*

        #[test]
        fn backend_suite_gaps_name_suite_tests() {
            $crate::testsuite::check_gaps($gaps, &[$(stringify!($name)),*]);
        }
    };
}

/// Runs suite test `name` on `b`, or, when `gaps` declares it, checks that it still fails.
///
/// # Panics
/// When the test fails, or when a declared gap passes.
pub fn run(b: &Backend, name: &str, gaps: &[(&str, &str)], test: fn(&Backend)) {
    match gaps.iter().find(|(gap, _)| *gap == name) {
        None => test(b),
        Some((_, reason)) => {
            let passed = std::panic::catch_unwind(|| test(b)).is_ok();
            assert!(!passed, "{name} is a declared gap of {} ({reason}), but it passes: remove the gap", b.name);
        }
    }
}

/// Checks that every declared gap names a test of the suite.
///
/// # Panics
/// When one does not.
pub fn check_gaps(gaps: &[(&str, &str)], names: &[&str]) {
    for (gap, _) in gaps {
        assert!(names.contains(gap), "declared gap `{gap}` is not a test of the backend suite");
    }
}

const ARITH: &str = r#"(module
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "add64") (param i64 i64) (result i64) (i64.add (local.get 0) (local.get 1)))
  (func (export "nothing") (param i32))
  (func (export "div") (param i32 i32) (result i32) (i32.div_s (local.get 0) (local.get 1))))"#;

/// Raw values in and out; bad references and arities are engine errors.
pub fn calls_exports_with_raw_values(b: &Backend) {
    let mut vm = b.instance(ARITH);
    assert_eq!(call(&mut *vm, "add", &[2, 3]).unwrap(), Some(5));
    // i32 results come back zero-extended.
    assert_eq!(call(&mut *vm, "add", &[0, u64::from(u32::MAX)]).unwrap(), Some(0xffff_ffff));
    assert_eq!(call(&mut *vm, "add64", &[1 << 40, u64::MAX]).unwrap(), Some((1 << 40) - 1));
    assert_eq!(call(&mut *vm, "nothing", &[7]).unwrap(), None);
    assert_eq!(call(&mut *vm, "div", &[9, 3]).unwrap(), Some(3));
    assert!(vm.lookup("missing").is_none());
    assert_eq!(vm.lookup("add"), vm.lookup("add"));
    assert!(matches!(vm.call(FuncRef(99), &[]), Err(Error::Engine { .. })));
    let add = vm.lookup("add").unwrap();
    assert!(matches!(vm.call(add, &[1]), Err(Error::Engine { .. })));
}

/// Imports and exports in declaration order, with their types.
pub fn describes_imports_and_exports(b: &Backend) {
    let m = b.module(
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

/// Malformed bytes are a compile error naming the engine.
pub fn compile_errors_are_reported(b: &Backend) {
    let err = (b.engine)().compile(b"\0asm\x01\0\0\0garbage").unwrap_err();
    assert!(matches!(err, Error::Compile { engine, .. } if engine == b.name), "{err:?}");
}

/// An import no host function provides fails instantiation, not a later call.
pub fn unknown_import_fails_at_instantiation(b: &Backend) {
    let m = b.module(r#"(module (import "env" "no_such_host_function" (func)))"#);
    let Err(err) = m.instantiate(HostState::for_tests(), &Limits::default()) else {
        panic!("instantiated a module with an unknown import");
    };
    assert!(matches!(err, Error::Engine { engine, .. } if engine == b.name), "{err:?}");
}

/// Reads inside memory succeed, reads past its end fail.
pub fn reads_memory(b: &Backend) {
    let mut vm = b.instance(r#"(module (memory (export "memory") 1) (data (i32.const 8) "hello"))"#);
    assert_eq!(vm.memory_size(), PAGE);
    let mut buf = [0u8; 5];
    vm.read(8, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    assert!(vm.read(PAGE - 2, &mut buf).is_err());
    assert!(vm.read(u64::MAX, &mut buf).is_err());
    vm.read(PAGE, &mut []).unwrap();
}

/// A module whose start function and `_initialize` change memory (after growing it) and
/// globals of every number type.
const SNAPSHOT: &str = r#"(module
  (memory (export "memory") 1 10)
  (global $g (mut i32) (i32.const 1))
  (global $h (mut i64) (i64.const 2))
  (global $f (mut f64) (f64.const 0.5))
  (global $s (mut f32) (f32.const 0.5))
  (global $k i32 (i32.const 99))
  (data (i32.const 16) "seed")
  (start $start)
  (func $start (global.set $h (i64.add (global.get $h) (i64.const -10))))
  (func (export "_initialize")
    (drop (memory.grow (i32.const 2)))
    (i32.store (i32.const 140000) (i32.const 0x01020304))
    (i32.store8 (i32.const 16) (i32.const 83))
    (global.set $g (i32.const -42))
    (global.set $f (f64.const -1.25))
    (global.set $s (f32.const 3.5)))
  (func (export "g") (result i32) (global.get $g))
  (func (export "h") (result i64) (global.get $h))
  (func (export "f") (result i64) (i64.reinterpret_f64 (global.get $f)))
  (func (export "s") (result i32) (i32.reinterpret_f32 (global.get $s)))
  (func (export "k") (result i32) (global.get $k))
  (func (export "poke") (i32.store (i32.const 140000) (i32.const 7)))
  (func (export "load") (param i32) (result i32) (i32.load (local.get 0))))"#;

/// A snapshot ([`crate::snapshot`]) carries the template's memory (grown size included) and
/// every mutable global, the start function does not run again, and instances made from it
/// are independent: the engine reads exported globals of every number type
/// ([`WasmInstance::global`]).
pub fn snapshots_carry_memory_and_globals(b: &Backend) {
    let engine = (b.engine)();
    let template = crate::snapshot::Template::parse(&wat::parse_str(SNAPSHOT).unwrap()).unwrap();
    let mut vm = engine
        .compile(template.instrumented())
        .unwrap()
        .instantiate(HostState::for_tests(), &Limits::default())
        .unwrap();
    let init = vm.lookup("_initialize").unwrap();
    vm.call(init, &[]).unwrap();
    let image = template.capture(&mut *vm).unwrap();
    let snapshot = engine.compile(&template.rewrite(&image)).unwrap();
    let new = || snapshot.instantiate(HostState::for_tests(), &Limits::default()).unwrap();
    let (mut a, mut z) = (new(), new());
    let get = |vm: &mut Box<dyn WasmInstance>, name: &str, args: &[u64]| {
        let f = vm.lookup(name).unwrap();
        vm.call(f, args).unwrap().unwrap_or_default()
    };
    assert_eq!(a.memory_size(), 3 * PAGE);
    assert_eq!(get(&mut a, "g", &[]), u64::from(-42i32 as u32));
    // The start function ran once, in the template.
    assert_eq!(get(&mut a, "h", &[]), -8i64 as u64);
    assert_eq!(get(&mut a, "f", &[]), (-1.25f64).to_bits());
    assert_eq!(get(&mut a, "s", &[]), u64::from(3.5f32.to_bits()));
    assert_eq!(get(&mut a, "k", &[]), 99);
    assert_eq!(get(&mut a, "load", &[140_000]), 0x0102_0304);
    let mut seed = [0u8; 4];
    a.read(16, &mut seed).unwrap();
    assert_eq!(&seed, b"Seed");
    assert!(a.lookup("_initialize").is_none(), "the snapshot has run its start-up export");
    get(&mut a, "poke", &[]);
    assert_eq!(get(&mut a, "load", &[140_000]), 7);
    assert_eq!(get(&mut z, "load", &[140_000]), 0x0102_0304, "instances share no memory");
}

/// A module that does not export its memory has none, as far as the host can see.
pub fn no_memory_export_reads_fail(b: &Backend) {
    let mut vm = b.instance(r#"(module (memory 1))"#);
    assert_eq!(vm.memory_size(), 0);
    assert!(vm.read(0, &mut [0u8; 1]).is_err());
}

/// Every trap maps to the same [`TrapKind`] on every engine, and the instance survives it.
pub fn traps_are_normalized(b: &Backend) {
    let mut vm = b.instance(
        r#"(module
      (memory 1)
      (func $boom (export "unreachable") unreachable)
      (func $via (export "via") call $boom)
      (func (export "oob") (result i32) (i32.load (i32.const 65536)))
      (func (export "div0") (result i32) (i32.div_u (i32.const 1) (i32.const 0)))
      (func $rec (export "recurse") (param i32) (result i32) (call $rec (i32.add (local.get 0) (i32.const 1)))))"#,
    );
    assert_eq!(b.trap_kind(call(&mut *vm, "unreachable", &[])), TrapKind::Unreachable);
    assert_eq!(b.trap_kind(call(&mut *vm, "oob", &[])), TrapKind::OutOfBounds);
    assert_eq!(b.trap_kind(call(&mut *vm, "div0", &[])), TrapKind::Arithmetic);
    assert_eq!(b.trap_kind(call(&mut *vm, "recurse", &[0])), TrapKind::StackOverflow);
    let Err(Error::Trap(trap)) = call(&mut *vm, "via", &[]) else { panic!("expected a trap") };
    assert_eq!(trap.kind, TrapKind::Unreachable);
    match b.frames {
        Frames::Wasm => assert_eq!(trap.backtrace, ["boom", "via"], "{trap}"),
        // The entry point the host called, not `boom`, the function that trapped.
        Frames::EntryPoints => assert_eq!(trap.backtrace, ["via"], "{trap}"),
    }
}

/// Division by zero and `INT_MIN / -1`.
pub fn arithmetic_traps(b: &Backend) {
    let mut vm = b.instance(ARITH);
    assert_eq!(b.trap_kind(call(&mut *vm, "div", &[1, 0])), TrapKind::Arithmetic);
    let (min, minus_one) = (u64::from(i32::MIN.cast_unsigned()), u64::from(u32::MAX));
    assert_eq!(b.trap_kind(call(&mut *vm, "div", &[min, minus_one])), TrapKind::Arithmetic);
}

const SPIN: &str = r#"(module
  (func (export "spin") (loop $l (br $l)))
  (func (export "one") (result i32) i32.const 1))"#;

/// The deadline stops an infinite loop, and every top-level call gets a fresh one.
pub fn deadline_stops_infinite_loop(b: &Backend) {
    let mut vm = b.instance_with(SPIN, &deadline(20));
    assert_eq!(b.trap_kind(call(&mut *vm, "spin", &[])), TrapKind::Deadline);
    assert_eq!(b.trap_kind(call(&mut *vm, "spin", &[])), TrapKind::Deadline);
}

/// A stopped call leaves the instance usable, and an interrupt requested while no call runs
/// does not stop the next one.
pub fn usable_after_deadline(b: &Backend) {
    let mut vm = b.instance_with(SPIN, &deadline(10));
    for _ in 0..3 {
        assert_eq!(b.trap_kind(call(&mut *vm, "spin", &[])), TrapKind::Deadline);
        assert_eq!(call(&mut *vm, "one", &[]).unwrap(), Some(1));
    }
    (vm.interrupt_handle())();
    assert_eq!(call(&mut *vm, "one", &[]).unwrap(), Some(1));
}

/// The interrupt handle stops a call from another thread.
pub fn interrupt_from_another_thread(b: &Backend) {
    let limits = Limits { callback_deadline: None, ..Limits::default() };
    let mut vm = b.instance_with(SPIN, &limits);
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
    assert_eq!(b.trap_kind(result), TrapKind::Deadline);
}

const GROW: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "grow_or_die") (param i32)
    (if (i32.eq (memory.grow (local.get 0)) (i32.const -1)) (then unreachable))))"#;

/// Growth past the limit fails; a trap after a refusal is [`TrapKind::MemoryLimit`].
pub fn memory_growth_is_capped(b: &Backend) {
    let limits = Limits { max_memory_bytes: 2 * PAGE, ..Limits::default() };
    let mut vm = b.instance_with(GROW, &limits);
    assert_eq!(call(&mut *vm, "grow", &[1]).unwrap(), Some(1));
    assert_eq!(vm.memory_size(), 2 * PAGE);
    assert_eq!(call(&mut *vm, "grow", &[1]).unwrap(), Some(0xffff_ffff));
    assert_eq!(vm.memory_size(), 2 * PAGE);
    assert_eq!(b.trap_kind(call(&mut *vm, "grow_or_die", &[1])), TrapKind::MemoryLimit);
    assert_eq!(call(&mut *vm, "grow", &[0]).unwrap(), Some(2));
}

/// A module whose initial memory is over the limit does not instantiate.
pub fn initial_memory_over_limit_fails_instantiation(b: &Backend) {
    let m = b.module(r#"(module (memory (export "memory") 4))"#);
    let limits = Limits { max_memory_bytes: 2 * PAGE, ..Limits::default() };
    assert!(m.instantiate(HostState::for_tests(), &limits).is_err());
}

/// Only a refusal by the host's limit in the same call makes a trap a memory-limit trap.
pub fn refused_growth_is_attributed_precisely(b: &Backend) {
    let wat = r#"(module
      (memory (export "memory") 1 1000)
      (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
      (func (export "boom") unreachable)
      (func (export "grow_or_die") (param i32)
        (loop $l (br_if $l (i32.ne (memory.grow (local.get 0)) (i32.const -1))))
        unreachable))"#;
    let limits = Limits { max_memory_bytes: 64 * PAGE, ..Limits::default() };
    let mut vm = b.instance_with(wat, &limits);
    // Growth by 16 pages is refused at 49 pages, below the limit of 64.
    assert_eq!(b.trap_kind(call(&mut *vm, "grow_or_die", &[16])), TrapKind::MemoryLimit);
    assert_eq!(vm.memory_size(), 49 * PAGE);
    // A refusal the guest survived does not taint a later, unrelated trap.
    assert_eq!(call(&mut *vm, "grow", &[16]).unwrap(), Some(0xffff_ffff));
    assert_eq!(b.trap_kind(call(&mut *vm, "boom", &[])), TrapKind::Unreachable);

    // The module's own maximum is not the host's limit.
    let wat = r#"(module (memory (export "memory") 1 2)
      (func (export "grow_or_die") (loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable))"#;
    let mut vm = b.instance(wat);
    assert_eq!(b.trap_kind(call(&mut *vm, "grow_or_die", &[])), TrapKind::Unreachable);
}

const COUNTER: &str = r#"(module (memory (export "memory") 1)
  (func (export "set") (param i32) (i32.store (i32.const 0) (local.get 0)))
  (func (export "get") (result i32) (i32.load (i32.const 0))))"#;

/// Instances of one module share code, not memory.
pub fn instances_have_independent_memories(b: &Backend) {
    let m = b.module(COUNTER);
    let mut x = m.instantiate(HostState::for_tests(), &Limits::default()).unwrap();
    let mut y = m.instantiate(HostState::for_tests(), &Limits::default()).unwrap();
    call(&mut *x, "set", &[42]).unwrap();
    assert_eq!(call(&mut *x, "get", &[]).unwrap(), Some(42));
    assert_eq!(call(&mut *y, "get", &[]).unwrap(), Some(0));
    let mut word = [0u8; 4];
    x.read(0, &mut word).unwrap();
    assert_eq!(u32::from_le_bytes(word), 42);
}

/// Two engines with the same settings have the same fingerprint, which names the engine.
pub fn fingerprint_is_stable(b: &Backend) {
    let a = (b.engine)().fingerprint();
    assert!(a.starts_with(&format!("{}-", b.name)), "{a}");
    assert_eq!(a, (b.engine)().fingerprint());
}

/// Where the engine serializes modules, another engine with the same settings loads them; and
/// it refuses bytes that are not an artifact.
pub fn serialized_modules_round_trip(b: &Backend) {
    let wat = r#"(module (memory (export "memory") 1)
      (global $g (mut i32) (i32.const 40))
      (func (export "add") (param i32) (result i32) (global.set $g (i32.add (global.get $g) (local.get 0))) (global.get $g)))"#;
    let a = (b.engine)();
    let garbage = a.deserialize(b"not an artifact");
    assert!(matches!(garbage, Err(Error::Engine { engine, .. }) if engine == b.name), "{garbage:?}");
    let Some(artifact) = a.serialize(&*a.compile(&wat::parse_str(wat).unwrap()).unwrap()) else { return };
    let other = (b.engine)();
    let m = other.deserialize(&artifact).expect("deserializes");
    assert!(m.exports().iter().any(|e| e.name == "add"));
    let mut vm = m.instantiate(HostState::for_tests(), &Limits::default()).unwrap();
    assert_eq!(call(&mut *vm, "add", &[2]).unwrap(), Some(42));
}

/// A minimal proxy-wasm filter: `proxy_on_configure` reads `plugin_name` through
/// `proxy_get_property`, which calls back into `malloc` (a re-entrant call). `set_mode` makes
/// `malloc` trap (1), spin (2), or grow memory and allocate in the new page (3).
pub const FILTER: &str = r#"(module
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
    (if (i32.eq (global.get $mode) (i32.const 3))
      (then (return (i32.mul (memory.grow (i32.const 1)) (i32.const 65536)))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get 0)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func $on_configure (export "proxy_on_configure") (param i32 i32) (result i32)
    (i32.eqz (call $get_property (i32.const 16) (i32.const 11) (i32.const 0) (i32.const 4)))))"#;

/// Reads the `(ptr, len)` pair a host function returned at address 0, and the bytes it names.
fn returned_bytes(vm: &mut Vm) -> (u64, Vec<u8>) {
    let inst = vm.instance();
    let mut out = [0u8; 8];
    inst.read(0, &mut out).unwrap();
    let ptr = u64::from(u32::from_le_bytes(out[..4].try_into().unwrap()));
    let mut bytes = vec![0u8; u32::from_le_bytes(out[4..].try_into().unwrap()) as usize];
    inst.read(ptr, &mut bytes).unwrap();
    (ptr, bytes)
}

/// A host function allocates in the guest (re-entrant call) and writes there.
pub fn host_function_calls_back_into_the_guest(b: &Backend) {
    let (mut vm, root) = b.filter_vm(0, &Limits::default());
    root.expect("start_plugin");
    assert_eq!(returned_bytes(&mut vm), (1024, b"my-plugin".to_vec()));
}

/// A trap in the re-entrant call ends the outer call with that trap.
pub fn trap_in_reentrant_call_ends_the_outer_call(b: &Backend) {
    let (_vm, root) = b.filter_vm(1, &Limits::default());
    let Err(Error::Trap(trap)) = root else { panic!("expected a trap, got {root:?}") };
    assert_eq!(trap.kind, TrapKind::Unreachable, "{trap}");
    assert_eq!(trap.backtrace.first().map(String::as_str), Some("malloc"), "{trap}");
    if b.frames == Frames::EntryPoints {
        assert_eq!(trap.backtrace, ["malloc", "proxy_on_configure"], "{trap}");
    }
}

/// The outer call's deadline covers the re-entrant call.
pub fn deadline_covers_reentrant_calls(b: &Backend) {
    let (_vm, root) = b.filter_vm(2, &deadline(20));
    let Err(Error::Trap(trap)) = root else { panic!("expected a trap, got {root:?}") };
    assert_eq!(trap.kind, TrapKind::Deadline, "{trap}");
}

/// A callback that never returns and calls the host (which calls back into `malloc`) on every
/// iteration.
const REENTRANT_SPIN: &str = r#"(module
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (data (i32.const 16) "plugin_name")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32)
    (global.set $heap (i32.add (i32.const 1024) (i32.and (global.get $heap) (i32.const 0xfff))))
    (global.get $heap))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (loop $l (drop (call $get_property (i32.const 16) (i32.const 11) (i32.const 0) (i32.const 4))) (br $l))
    (i32.const 1)))"#;

/// Re-entrant calls draw on the outer call's budget: were it refilled by each `malloc`, this
/// callback would never stop.
pub fn reentrant_calls_do_not_refuel(b: &Backend) {
    let m = b.module(REENTRANT_SPIN);
    let mut vm = Vm::new(&*m, AbiVersion::V0_2_1, Arc::default(), &deadline(20)).expect("vm");
    let plugin = PluginConfig { name: "my-plugin".into(), ..Default::default() };
    let Err(Error::Trap(trap)) = vm.start_plugin(Arc::new(plugin)) else { panic!("expected a trap") };
    assert_eq!(trap.kind, TrapKind::Deadline, "{trap}");
}

/// A host function with an `i64` parameter (`clock_time_get`), under both WASI module names.
pub fn dynamic_host_function_path(b: &Backend) {
    let wat = |module: &str| {
        format!(
            r#"(module
          (import "{module}" "clock_time_get" (func $now (param i32 i64 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "now") (param i32) (result i32) (call $now (i32.const 0) (i64.const 1) (local.get 0))))"#
        )
    };
    for module in ["wasi_snapshot_preview1", "wasi_unstable"] {
        let mut vm = b.instance(&wat(module));
        assert_eq!(call(&mut *vm, "now", &[8]).unwrap(), Some(0));
        let mut out = [0u8; 8];
        vm.read(8, &mut out).unwrap();
        assert_ne!(u64::from_le_bytes(out), 0);
        // A bad pointer is the guest's problem (EFAULT), not a trap.
        assert_ne!(call(&mut *vm, "now", &[u64::from(u32::MAX)]).unwrap(), Some(0));
    }
}

/// The allocator grows memory and hands out an address in the new page: the host must write
/// through the grown memory, not a stale view.
pub fn host_writes_into_memory_grown_by_a_reentrant_call(b: &Backend) {
    let (mut vm, root) = b.filter_vm(3, &Limits::default());
    root.expect("start_plugin");
    assert_eq!(vm.instance().memory_size(), 2 * PAGE);
    assert_eq!(returned_bytes(&mut vm), (PAGE, b"my-plugin".to_vec()));
}

/// Memory grown by the guest between two host calls of one callback is seen by the second.
pub fn host_sees_growth_between_host_calls(b: &Backend) {
    // `proxy_get_current_time_nanoseconds(ptr)` writes 8 bytes at `ptr` (status 0 when in
    // bounds). The guest makes the host touch memory, grows it, then has the host write past
    // the old end.
    let wat = r#"(module
      (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "probe") (result i32)
        (drop (call $now (i32.const 8)))
        (drop (memory.grow (i32.const 1)))
        (call $now (i32.sub (i32.mul (memory.size) (i32.const 65536)) (i32.const 8)))))"#;
    let mut vm = b.instance(wat);
    for pages in 2..5 {
        assert_eq!(call(&mut *vm, "probe", &[]).unwrap(), Some(0));
        assert_eq!(vm.memory_size(), pages * PAGE);
        let mut out = [0u8; 8];
        vm.read(pages * PAGE - 8, &mut out).unwrap();
        assert_ne!(out, [0; 8]);
    }
}

/// Instances are `Send`: made on one thread, used and dropped on others, interleaved.
pub fn instances_move_between_threads(b: &Backend) {
    let m = b.module(COUNTER);
    let new = || m.instantiate(HostState::for_tests(), &Limits::default()).unwrap();
    let mut x = new();
    call(&mut *x, "set", &[1]).unwrap();
    let mut x = std::thread::spawn(move || {
        assert_eq!(call(&mut *x, "get", &[]).unwrap(), Some(1));
        call(&mut *x, "set", &[2]).unwrap();
        x
    })
    .join()
    .unwrap();
    assert_eq!(call(&mut *x, "get", &[]).unwrap(), Some(2));

    // Used on another thread while this one runs another instance.
    let mut y = new();
    let worker = std::thread::spawn(move || {
        for i in 0..2000 {
            call(&mut *x, "set", &[i]).unwrap();
        }
        x
    });
    for i in 0..2000 {
        call(&mut *y, "set", &[i + 7]).unwrap();
    }
    let mut x = worker.join().unwrap();
    assert_eq!(call(&mut *x, "get", &[]).unwrap(), Some(1999));
    assert_eq!(call(&mut *y, "get", &[]).unwrap(), Some(2006));

    // Made on a thread that exits, used here afterwards.
    let mut z = std::thread::spawn({
        let m = m.clone();
        move || {
            let mut z = m.instantiate(HostState::for_tests(), &Limits::default()).unwrap();
            call(&mut *z, "set", &[5]).unwrap();
            z
        }
    })
    .join()
    .unwrap();
    assert_eq!(call(&mut *z, "get", &[]).unwrap(), Some(5));

    // Dropped on another thread.
    std::thread::spawn(move || drop(x)).join().unwrap();
    assert_eq!(call(&mut *y, "get", &[]).unwrap(), Some(2006));
}

/// Many instances used in turn on one thread keep their own state.
pub fn many_instances_on_one_thread(b: &Backend) {
    let m = b.module(COUNTER);
    let mut vms: Vec<_> = (0..8).map(|_| m.instantiate(HostState::for_tests(), &Limits::default()).unwrap()).collect();
    for round in 0..50u64 {
        for (i, vm) in (0u64..).zip(vms.iter_mut()) {
            call(&mut **vm, "set", &[round * 10 + i]).unwrap();
        }
    }
    for (i, vm) in (0u64..).zip(vms.iter_mut()) {
        assert_eq!(call(&mut **vm, "get", &[]).unwrap(), Some(490 + i));
    }
}

/// Runaway recursion on a thread with a small native stack is a trap, not a crash, even when
/// the instance asks for more stack than the thread has.
pub fn stack_overflow_on_a_small_thread_stack(b: &Backend) {
    let wat = r#"(module
      (func $rec (export "recurse") (param i32) (result i32) (call $rec (i32.add (local.get 0) (i32.const 1)))))"#;
    let m = b.module(wat);
    let limits = Limits { max_stack_bytes: 64 << 20, ..Limits::default() };
    let mut vm = m.instantiate(HostState::for_tests(), &limits).unwrap();
    let b = *b;
    let kind = std::thread::Builder::new()
        .stack_size(512 << 10)
        .spawn(move || b.trap_kind(call(&mut *vm, "recurse", &[0])))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(kind, TrapKind::StackOverflow);
}

const TABLES: &str = r#"(module
  (table $t (export "table") 10 funcref)
  (func (export "grow") (param i32) (result i32) (table.grow $t (ref.null func) (local.get 0)))
  (func (export "grow_all") (result i32)
    (local $n i32)
    (loop $l
      (if (i32.ne (table.grow $t (ref.null func) (i32.const 1000)) (i32.const -1))
        (then (local.set $n (i32.add (local.get $n) (i32.const 1))) (br $l))))
    (local.get $n)))"#;

/// `table.grow` past [`Limits::max_table_elements`] (over all tables) fails with -1, however
/// often the guest asks.
pub fn table_growth_is_capped(b: &Backend) {
    let limits = Limits { max_table_elements: 2_010, ..Limits::default() };
    let mut vm = b.instance_with(TABLES, &limits);
    assert_eq!(call(&mut *vm, "grow", &[1000]).unwrap(), Some(10));
    assert_eq!(call(&mut *vm, "grow", &[1001]).unwrap(), Some(0xffff_ffff));
    assert_eq!(call(&mut *vm, "grow", &[1000]).unwrap(), Some(1010));
    assert_eq!(call(&mut *vm, "grow", &[1]).unwrap(), Some(0xffff_ffff));
    // The default limit holds against a guest that grows until refused.
    let mut vm = b.instance(TABLES);
    let grown = call(&mut *vm, "grow_all", &[]).unwrap().unwrap_or(0);
    assert!(grown * 1000 + 10 <= Limits::DEFAULT_MAX_TABLE_ELEMENTS, "{grown} growths of 1000 elements");
}

/// A module whose tables start over the limit does not instantiate.
pub fn initial_tables_over_limit_fail_instantiation(b: &Backend) {
    let m = b.module(r#"(module (table 600 funcref) (table 600 funcref))"#);
    let limits = Limits { max_table_elements: 1_000, ..Limits::default() };
    assert!(m.instantiate(HostState::for_tests(), &limits).is_err());
    let limits = Limits { max_table_elements: 1_200, ..Limits::default() };
    assert!(m.instantiate(HostState::for_tests(), &limits).is_ok());
}

/// Modules outside wasmux's feature set or limits are refused at compile on every engine, with
/// a compile error naming the engine.
pub fn invalid_modules_are_refused_alike(b: &Backend) {
    let refused = [
        // A table used but never declared (some engines' rewrites add one).
        r#"(module (type $t (func)) (func (call_indirect (type $t) (i32.const 0))))"#,
        // Two memories.
        r#"(module (memory 1) (memory 1))"#,
        // SIMD.
        r#"(module (func (drop (v128.const i64x2 0 0))))"#,
        // Tail calls.
        r#"(module (func $f (return_call $f)))"#,
        // Threads: a shared memory.
        r#"(module (memory 1 1 shared))"#,
    ];
    for wat in refused {
        let bytes = wat::parse_str(wat).expect("wat");
        match (b.engine)().compile(&bytes) {
            Err(Error::Compile { engine, .. }) => assert_eq!(engine, b.name, "{wat}"),
            other => panic!("{wat}: expected a compile error, got {other:?}"),
        }
    }
    // Deep nesting is refused before any compiler sees it.
    let depth = crate::validate::MAX_NESTING as usize;
    let deep = format!("(module (func {} {}))", "(block ".repeat(depth), ")".repeat(depth));
    let bytes = wat::parse_str(&deep).expect("wat");
    assert!(matches!((b.engine)().compile(&bytes), Err(Error::Compile { .. })));
}

/// A guest that spends its callback in host calls (64 KiB of `random_get` each) is stopped at
/// its deadline, as one spinning in wasm is: the deadline is time, host time included.
pub fn deadline_counts_host_time(b: &Backend) {
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
      (memory (export "memory") 2)
      (func (export "host_loop") (loop $l (drop (call $random (i32.const 0) (i32.const 65536))) (br $l))))"#;
    let mut vm = b.instance_with(wat, &deadline(100));
    let started = std::time::Instant::now();
    assert_eq!(b.trap_kind(call(&mut *vm, "host_loop", &[])), TrapKind::Deadline);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{}: a 100 ms deadline stopped the call after {took:?}", b.name);
}

/// A module dominated by one large function (about 1 MB of code), first called after a few
/// million loop iterations, and bulk-memory work: the call runs to its end when the deadline
/// is disabled.
pub fn no_deadline_means_none(b: &Backend) {
    let limits = Limits { callback_deadline: None, ..Limits::default() };
    let m = b.module(&large_module());
    let mut vm = m.instantiate(HostState::for_tests(), &limits).expect("instantiate");
    assert_eq!(call(&mut *vm, "run", &[2_000_000]).unwrap(), Some(LARGE_RESULT));
}

/// The same work under a generous deadline finishes too: a deadline never fires before its
/// time has passed.
pub fn deadline_waits_for_its_time(b: &Backend) {
    let m = b.module(&large_module());
    let mut vm = m.instantiate(HostState::for_tests(), &deadline(60_000)).expect("instantiate");
    assert_eq!(call(&mut *vm, "run", &[2_000_000]).unwrap(), Some(LARGE_RESULT));
}

/// What `run` of [`large_module`] returns: the big function adds 1 per `i32.add` it holds.
const LARGE_RESULT: u64 = 100_000;

/// A module with `run(n)`: `n` loop iterations, a 32 MiB `memory.fill` and `memory.copy`, then
/// the first call of a function of about 1 MB (100 000 increments).
fn large_module() -> String {
    let mut big = String::with_capacity(4 << 20);
    big.push_str("(func $big (result i32) (local $x i32)\n");
    for _ in 0..LARGE_RESULT {
        big.push_str("(local.set $x (i32.add (local.get $x) (i32.const 1)))\n");
    }
    big.push_str("(local.get $x))\n");
    format!(
        r#"(module
      (memory (export "memory") 1024)
      {big}
      (func (export "run") (param $n i32) (result i32)
        (loop $l (local.set $n (i32.sub (local.get $n) (i32.const 1))) (br_if $l (local.get $n)))
        (memory.fill (i32.const 0) (i32.const 7) (i32.const 33554432))
        (memory.copy (i32.const 33554432) (i32.const 0) (i32.const 33554432))
        (call $big)))"#
    )
}
