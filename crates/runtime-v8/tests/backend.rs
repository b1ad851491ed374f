//! The V8 backend: the shared backend suite, then what only V8 has (its version in the
//! fingerprint, isolates kept in thread-locals).

use std::sync::Arc;

use wasmux_abi::testsuite::{Backend, Frames, call};
use wasmux_abi::{HostState, Limits, WasmEngine, WasmInstance};
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
