//! The null engine on the conformance fixtures built natively (`scripts/build-native-fixtures.sh`):
//! loading, a request through the ABI layer, and the per-thread rules of native SDK state.

use std::path::PathBuf;
use std::sync::Arc;

use wasmux_abi::services::MemoryLog;
use wasmux_abi::{
    AbiVersion, Action, HeaderMap, LogLevel, PluginConfig, Services, Vm, VmEnv, WasmEngine, WasmModule, check_module,
};
use wasmux_null::NullEngine;

fn library(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../conformance/fixtures/target")
        .join(env!("WASMUX_NULL_TARGET"))
        .join("release")
        .join(format!("libfixture_{name}.so"));
    assert!(path.is_file(), "{} is missing: run scripts/build-native-fixtures.sh", path.display());
    path
}

fn env(log: &Arc<MemoryLog>) -> Arc<VmEnv> {
    Arc::new(VmEnv {
        services: Services { log: log.clone(), ..Services::default() },
        log_level: LogLevel::Trace,
        ..VmEnv::default()
    })
}

/// Starts a plugin configured with `buffered`: the `body` filter's configuration; most others
/// ignore it.
fn start(module: &dyn WasmModule, log: &Arc<MemoryLog>) -> wasmux_abi::Result<(Vm, u32)> {
    start_with(module, log, b"buffered")
}

fn start_with(module: &dyn WasmModule, log: &Arc<MemoryLog>, config: &[u8]) -> wasmux_abi::Result<(Vm, u32)> {
    let info = check_module(module)?;
    let mut vm = Vm::new(module, info.abi, env(log), &Default::default())?;
    let plugin = PluginConfig { name: "p".into(), root_id: String::new(), configuration: config.to_vec() };
    let root = vm.start_plugin(Arc::new(plugin))?;
    Ok((vm, root))
}

fn messages(log: &MemoryLog) -> Vec<String> {
    log.records().into_iter().map(|r| r.message).collect()
}

#[test]
fn headers_filter_runs_natively() {
    let module = NullEngine.load_library(library("headers")).unwrap();
    let info = check_module(&*module).unwrap();
    assert_eq!(info.abi, AbiVersion::V0_2_1);
    assert_eq!(info.allocator, "proxy_on_memory_allocate");
    assert!(module.imports().iter().any(|i| i.name == "proxy_log" && i.module == "env"));

    let log = Arc::new(MemoryLog::default());
    let (mut vm, root) = start(&*module, &log).unwrap();
    assert!(messages(&log).contains(&"log level: Trace".to_string()), "{:?}", messages(&log));

    let id = vm.create_http_stream(root).unwrap();
    let headers = HeaderMap::from_pairs([(":path", "/deny"), ("x-remove-me", "1")]);
    assert_eq!(vm.on_request_headers(id, headers, true).unwrap(), Action::Pause);
    let h = vm.http(id).unwrap();
    assert_eq!(h.request_headers.get(b"x-wasmux-request"), Some(&b"seen"[..]));
    assert_eq!(h.request_headers.get(b"x-remove-me"), None);
    let reply = h.local_reply.clone().unwrap();
    assert_eq!((reply.status_code, reply.body), (403, b"denied\n".to_vec()));
    assert!(messages(&log).contains(&"request path: /deny".to_string()));
    assert!(vm.finish(id).unwrap());
    assert_eq!(messages(&log).last().map(String::as_str), Some("stream done"));
}

#[test]
fn abi_0_1_0_library_starts_with_its_native_initialize() {
    let module = NullEngine.load_library(library("headers_v010")).unwrap();
    let log = Arc::new(MemoryLog::default());
    let (mut vm, root) = start(&*module, &log).unwrap();
    assert_eq!(vm.abi(), AbiVersion::V0_1_0);
    let id = vm.create_http_stream(root).unwrap();
    let headers = HeaderMap::from_pairs([(":path", "/x")]);
    assert_eq!(vm.on_request_headers(id, headers, false).unwrap(), Action::Continue);
    assert!(messages(&log).contains(&"on_request_headers num_headers=1".to_string()), "{:?}", messages(&log));
}

#[test]
fn one_live_instance_per_library_and_thread() {
    let module = NullEngine.load_library(library("body")).unwrap();
    let log = Arc::new(MemoryLog::default());
    let (mut vm, root) = start(&*module, &log).unwrap();
    vm.create_http_stream(root).unwrap();

    let err = start(&*module, &log).unwrap_err().to_string();
    assert!(err.contains("already has a live instance on this thread"), "{err}");
    // Another thread has its own SDK state.
    let m = module.clone();
    std::thread::spawn(move || {
        let log = Arc::new(MemoryLog::default());
        let (mut vm, root) = start(&*m, &log).unwrap();
        vm.create_http_stream(root).unwrap();
    })
    .join()
    .unwrap();
    // A copy loaded from bytes is another library.
    let bytes = std::fs::read(library("body")).unwrap();
    let copy = NullEngine.compile(&bytes).unwrap();
    let (_vm2, _) = start(&*copy, &log).unwrap();

    // Dropping the instance deletes its contexts from the SDK: ids start at 1 again.
    drop(vm);
    let (mut vm, root) = start(&*module, &log).unwrap();
    assert_eq!(root, 1);
    assert_eq!(vm.create_http_stream(root).unwrap(), 2);
}

#[test]
fn pending_callouts_are_forgotten_on_drop() {
    let module = NullEngine.load_library(library("callout")).unwrap();
    let log = Arc::new(MemoryLog::default());
    for _ in 0..2 {
        // The same token (1) is dispatched by each instance; the SDK would abort on a duplicate.
        let (mut vm, root) = start(&*module, &log).unwrap();
        let id = vm.create_http_stream(root).unwrap();
        let headers = HeaderMap::from_pairs([(":path", "/"), ("x-user", "u")]);
        assert_eq!(vm.on_request_headers(id, headers, true).unwrap(), Action::Pause);
    }
}

#[test]
fn calls_from_another_thread_are_refused_and_cleanup_waits_for_the_owner() {
    let module = NullEngine.load_library(library("tcp")).unwrap();
    let log = Arc::new(MemoryLog::default());
    let (mut vm, root) = start(&*module, &log).unwrap();
    vm.create_tcp_stream(root).unwrap();
    let err = std::thread::spawn(move || {
        let e = vm.create_tcp_stream(root).unwrap_err().to_string();
        drop(vm);
        e
    })
    .join()
    .unwrap();
    assert!(err.contains("runs only on the thread that created it"), "{err}");
    // The contexts of the dropped instance are cleared before the next instance starts here.
    let (mut vm, root) = start(&*module, &log).unwrap();
    assert_eq!(root, 1);
    let (id, action) = vm.create_tcp_stream(root).unwrap();
    assert_eq!((id, action), (2, Action::Continue));
}

#[test]
fn libraries_missing_host_functions_are_reported_by_the_abi_check() {
    // A 0.2.x library checked against its version: nothing missing.
    let module = NullEngine.load_library(library("lifecycle")).unwrap();
    assert!(check_module(&*module).is_ok());
    assert!(module.exports().iter().any(|e| e.name == "memory"));
    assert!(module.exports().iter().any(|e| e.name == "_initialize"));
}

#[test]
fn exports_are_the_library_s_own() {
    let module = NullEngine.load_library(library("properties")).unwrap();
    let log = Arc::new(MemoryLog::default());
    let (mut vm, _) = start(&*module, &log).unwrap();
    let inst = vm.instance();
    // libc's `malloc` is reachable through the library's dependencies, but is not its export.
    assert!(inst.lookup("malloc").is_none());
    assert!(inst.lookup("proxy_on_memory_allocate").is_some());
    assert!(!module.exports().iter().any(|e| e.name == "malloc"));
}

#[test]
fn destructors_at_thread_exit_do_not_abort() {
    // An instance that is never dropped leaves its contexts in the thread's SDK state; the
    // SDK drops them when the thread exits, and their destructors log outside any call.
    let module = NullEngine.load_library(library("lifecycle")).unwrap();
    std::thread::spawn(move || {
        let log = Arc::new(MemoryLog::default());
        let (mut vm, root) = start_with(&*module, &log, b"").unwrap();
        vm.create_http_stream(root).unwrap();
        std::mem::forget(vm);
    })
    .join()
    .unwrap();
}
