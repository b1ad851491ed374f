//! The wasmtime backend: the shared backend suite, then what only wasmtime has (its settings
//! in the fingerprint, serialized modules).

use std::sync::Arc;

use wasmux_abi::testsuite::{Backend, Frames, call};
use wasmux_abi::{Error, HostState, Limits, WasmEngine};
use wasmux_wasmtime::{WasmtimeConfig, WasmtimeEngine};

fn engine() -> Arc<dyn WasmEngine> {
    Arc::new(WasmtimeEngine::new(WasmtimeConfig::default()).expect("engine"))
}

const BACKEND: Backend = Backend { name: "wasmtime", engine, frames: Frames::Wasm };

wasmux_abi::backend_suite!(BACKEND);

#[test]
fn fingerprint_names_the_version_and_settings() {
    let a = engine().fingerprint();
    assert!(a.starts_with("wasmtime-48.0.8-"), "{a}");
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
    let m = engine().deserialize(&artifact).expect("deserializes");
    let mut vm = m.instantiate(HostState::for_tests(), &Limits::default()).unwrap();
    assert_eq!(call(&mut *vm, "add", &[2]).unwrap(), Some(42));
    // Other settings, another fingerprint (so another cache key), even where wasmtime would
    // accept the code.
    let unoptimized = WasmtimeEngine::new(WasmtimeConfig::default().optimize(false)).unwrap();
    assert_ne!(a.fingerprint(), unoptimized.fingerprint());
    assert!(matches!(a.deserialize(b"not an artifact"), Err(Error::Engine { engine: "wasmtime", .. })));
    // A module of another engine instance is not serialized through this one.
    let other = unoptimized.compile(&wat::parse_str(wat).unwrap()).unwrap();
    assert!(a.serialize(&*other).is_none());
}
