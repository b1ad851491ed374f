//! The module cache (`wasmux::ModuleCache`) on wasmtime: misses compile and store, hits in
//! memory and on disk load without compiling, and a bad artifact (corrupt, truncated,
//! misplaced, refused by the engine) or another engine configuration is a miss, never an error.

#![cfg(feature = "wasmtime")]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use wasmux::abi::services::MemoryLog;
use wasmux::abi::{Result, WasmEngine, WasmModule};
use wasmux::{CacheKey, CacheSource, CacheStats, HeaderMap, ModuleCache, PluginOptions, Services};
use wasmux_wasmtime::{WasmtimeConfig, WasmtimeEngine};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/../../conformance/fixtures/wasm/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The realistic module of the benchmarks (~280 KB, serde_json inside).
fn bench_json() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| fixture("bench-json.wasip1.wasm"))
}

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wasmux-cache-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An engine shared by the tests of this binary (one epoch thread).
fn engine() -> Arc<dyn WasmEngine> {
    static ENGINE: OnceLock<Arc<dyn WasmEngine>> = OnceLock::new();
    ENGINE.get_or_init(|| Arc::new(WasmtimeEngine::new(WasmtimeConfig::default()).unwrap())).clone()
}

/// Wraps an engine, counting compiles; optionally refuses every artifact or cannot serialize.
#[derive(Debug)]
struct Probe {
    inner: Arc<dyn WasmEngine>,
    compiles: AtomicUsize,
    refuse: AtomicBool,
    serializes: bool,
}

impl Probe {
    fn new(serializes: bool) -> Arc<Self> {
        Arc::new(Self { inner: engine(), compiles: AtomicUsize::new(0), refuse: AtomicBool::new(false), serializes })
    }

    fn compiles(&self) -> usize {
        self.compiles.load(Ordering::SeqCst)
    }
}

impl WasmEngine for Probe {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn compile(&self, bytes: &[u8]) -> Result<Arc<dyn WasmModule>> {
        self.compiles.fetch_add(1, Ordering::SeqCst);
        self.inner.compile(bytes)
    }

    fn fingerprint(&self) -> String {
        self.inner.fingerprint()
    }

    fn serialize(&self, module: &dyn WasmModule) -> Option<Vec<u8>> {
        if self.serializes { self.inner.serialize(module) } else { None }
    }

    fn deserialize(&self, artifact: &[u8]) -> Result<Arc<dyn WasmModule>> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(wasmux::Error::Engine { engine: "probe", message: "artifact refused".into() });
        }
        self.inner.deserialize(artifact)
    }
}

/// Runs the bench-json filter on a loaded module: the README example must come out.
fn check_works(engine: Arc<dyn WasmEngine>, module: Arc<dyn WasmModule>) {
    let log = Arc::new(MemoryLog::default());
    let options = PluginOptions {
        plugin_configuration: br#"{"redact":["password"]}"#.to_vec(),
        services: Services { log: log.clone(), ..Services::default() },
        ..PluginOptions::default()
    };
    let compiled = wasmux::CompiledPlugin::from_module(engine, module, options).unwrap();
    let mut plugin = compiled.instantiate().unwrap();
    let id = plugin.http_stream().unwrap();
    let headers = HeaderMap::from_pairs([(":path", "/"), ("content-length", "31")]);
    plugin.request_headers(id, headers, false).unwrap();
    plugin.request_body(id, br#"{"user": "a", "password": "p"}"#, true).unwrap();
    let state = plugin.vm().http(id).unwrap();
    let body = [state.request_body.sent.as_slice(), state.request_body.buffered.as_slice()].concat();
    assert_eq!(String::from_utf8_lossy(&body), r#"{"password":"***","user":"a"}"#);
    assert_eq!(state.request_headers.get(b"x-json-summary"), Some(&b"keys=2 depth=1 redacted=1 bytes=29"[..]));
    assert_eq!(state.request_headers.get(b"content-length"), None);
    let lines: Vec<String> = log.records().into_iter().map(|r| r.message).collect();
    assert!(
        lines.contains(&"config: header=x-json-summary max_depth=32 redact=1 response_headers=0".to_string()),
        "{lines:?}"
    );
}

fn stats(memory_hits: u64, disk_hits: u64, misses: u64, rejected: u64) -> CacheStats {
    CacheStats { memory_hits, disk_hits, misses, rejected, write_errors: 0 }
}

#[test]
fn a_miss_compiles_then_memory_hits_skip_the_compiler() {
    let probe = Probe::new(true);
    let cache = ModuleCache::in_memory();
    let (module, source) = cache.load(&*probe, bench_json()).unwrap();
    assert_eq!(source, CacheSource::Compiled);
    assert_eq!(probe.compiles(), 1);
    check_works(probe.clone(), module);
    for _ in 0..2 {
        let (module, source) = cache.load(&*probe, bench_json()).unwrap();
        assert_eq!(source, CacheSource::Memory);
        check_works(probe.clone(), module);
    }
    assert_eq!(probe.compiles(), 1);
    assert_eq!(cache.stats(), stats(2, 0, 1, 0));
    // Another module is another key.
    let other = fixture("headers.wasip1.wasm");
    assert_eq!(cache.load(&*probe, &other).unwrap().1, CacheSource::Compiled);
    assert_eq!(probe.compiles(), 2);
}

#[test]
fn disk_hits_survive_the_process_and_fill_the_memory_tier() {
    let dir = TempDir::new("disk");
    let probe = Probe::new(true);
    let first = ModuleCache::on_disk(&dir.0).unwrap();
    assert_eq!(first.load(&*probe, bench_json()).unwrap().1, CacheSource::Compiled);
    let key = CacheKey::new(&*probe, bench_json());
    let path = first.path_of(&key).unwrap();
    assert_eq!(dir.files(), vec![path.clone()], "one file, no temporary left behind");
    drop(first);

    // A new cache on the same directory: what another process would see.
    let second = ModuleCache::on_disk(&dir.0).unwrap();
    let (module, source) = second.load(&*probe, bench_json()).unwrap();
    assert_eq!(source, CacheSource::Disk);
    check_works(probe.clone(), module);
    assert_eq!(second.load(&*probe, bench_json()).unwrap().1, CacheSource::Memory);
    assert_eq!(second.stats(), stats(1, 1, 0, 0));
    assert_eq!(probe.compiles(), 1);

    // Memory tier off: every load reads the file.
    let disk_only = ModuleCache::on_disk(&dir.0).unwrap().memory_capacity(0);
    for _ in 0..2 {
        assert_eq!(disk_only.load(&*probe, bench_json()).unwrap().1, CacheSource::Disk);
    }
    assert_eq!(probe.compiles(), 1);
}

/// Damages the cached file with `damage`, then checks that the next load recompiles, counts a
/// rejection, works, and leaves a good file behind for the load after it.
fn damaged_file_is_a_miss(name: &str, damage: impl FnOnce(&Path, &Path)) {
    let dir = TempDir::new(name);
    let probe = Probe::new(true);
    let cache = ModuleCache::on_disk(&dir.0).unwrap().memory_capacity(0);
    cache.load(&*probe, bench_json()).unwrap();
    let path = cache.path_of(&CacheKey::new(&*probe, bench_json())).unwrap();
    damage(&path, &dir.0);

    let (module, source) = cache.load(&*probe, bench_json()).unwrap();
    assert_eq!(source, CacheSource::Compiled, "{name}");
    check_works(probe.clone(), module);
    assert_eq!(cache.stats(), stats(0, 0, 2, 1), "{name}");
    assert_eq!(probe.compiles(), 2);
    // The bad file was replaced by a good one.
    assert_eq!(cache.load(&*probe, bench_json()).unwrap().1, CacheSource::Disk, "{name}");
}

#[test]
fn a_corrupt_artifact_is_a_miss() {
    damaged_file_is_a_miss("flipped", |path, _| {
        let mut bytes = std::fs::read(path).unwrap();
        let at = bytes.len() - 1000;
        bytes[at] ^= 0x40;
        std::fs::write(path, bytes).unwrap();
    });
    damaged_file_is_a_miss("truncated", |path, _| {
        let bytes = std::fs::read(path).unwrap();
        std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
    });
    damaged_file_is_a_miss("header-only", |path, _| {
        let bytes = std::fs::read(path).unwrap();
        std::fs::write(path, &bytes[..20]).unwrap();
    });
    damaged_file_is_a_miss("empty", |path, _| std::fs::write(path, b"").unwrap());
    damaged_file_is_a_miss("garbage", |path, _| std::fs::write(path, vec![0xA5; 4096]).unwrap());
    damaged_file_is_a_miss("misplaced", |path, dir| {
        // The artifact of another module, under this module's name.
        let probe = Probe::new(true);
        let other = ModuleCache::on_disk(dir.join("other")).unwrap();
        let headers = fixture("headers.wasip1.wasm");
        other.load(&*probe, &headers).unwrap();
        let other_path = other.path_of(&CacheKey::new(&*probe, &headers)).unwrap();
        std::fs::rename(other_path, path).unwrap();
    });
}

#[test]
fn an_artifact_the_engine_refuses_is_a_miss() {
    let dir = TempDir::new("refused");
    let probe = Probe::new(true);
    let cache = ModuleCache::on_disk(&dir.0).unwrap();
    cache.load(&*probe, bench_json()).unwrap();
    probe.refuse.store(true, Ordering::SeqCst);
    // Memory tier first, then the disk tier: both refused, recompiled, stored again.
    let (_, source) = cache.load(&*probe, bench_json()).unwrap();
    assert_eq!(source, CacheSource::Compiled);
    assert_eq!(cache.stats(), stats(0, 0, 2, 2));
    probe.refuse.store(false, Ordering::SeqCst);
    let (module, source) = cache.load(&*probe, bench_json()).unwrap();
    assert_eq!(source, CacheSource::Memory);
    check_works(probe.clone(), module);
}

#[test]
fn another_engine_configuration_is_another_key() {
    let dir = TempDir::new("config");
    let cache = ModuleCache::on_disk(&dir.0).unwrap();
    let speed = engine();
    let none: Arc<dyn WasmEngine> = Arc::new(WasmtimeEngine::new(WasmtimeConfig::default().optimize(false)).unwrap());
    let small_stack: Arc<dyn WasmEngine> =
        Arc::new(WasmtimeEngine::new(WasmtimeConfig::default().max_stack_bytes(256 << 10)).unwrap());
    assert_ne!(speed.fingerprint(), none.fingerprint());
    assert_ne!(speed.fingerprint(), small_stack.fingerprint());

    assert_eq!(cache.load(&*speed, bench_json()).unwrap().1, CacheSource::Compiled);
    for other in [&none, &small_stack] {
        let (module, source) = cache.load(&**other, bench_json()).unwrap();
        assert_eq!(source, CacheSource::Compiled, "{}", other.fingerprint());
        check_works(other.clone(), module);
    }
    assert_eq!(dir.files().len(), 3);
    // Same configuration, another engine instance: same key, a hit.
    let again: Arc<dyn WasmEngine> = Arc::new(WasmtimeEngine::new(WasmtimeConfig::default()).unwrap());
    assert_eq!(again.fingerprint(), speed.fingerprint());
    let fresh = ModuleCache::on_disk(&dir.0).unwrap();
    let (module, source) = fresh.load(&*again, bench_json()).unwrap();
    assert_eq!(source, CacheSource::Disk);
    check_works(again, module);
    assert_eq!(cache.stats().rejected + fresh.stats().rejected, 0);
}

#[test]
fn engines_that_cannot_serialize_compile_every_time() {
    let dir = TempDir::new("uncacheable");
    let probe = Probe::new(false);
    let cache = ModuleCache::on_disk(&dir.0).unwrap();
    for _ in 0..2 {
        let (module, source) = cache.load(&*probe, bench_json()).unwrap();
        assert_eq!(source, CacheSource::Uncacheable);
        check_works(probe.clone(), module);
    }
    assert_eq!(probe.compiles(), 2);
    assert!(dir.files().is_empty());
}

#[test]
fn an_unwritable_directory_still_loads() {
    let dir = TempDir::new("unwritable");
    let cache = ModuleCache::on_disk(dir.0.join("gone")).unwrap();
    std::fs::remove_dir_all(dir.0.join("gone")).unwrap();
    let probe = Probe::new(true);
    let (module, source) = cache.load(&*probe, bench_json()).unwrap();
    assert_eq!(source, CacheSource::Compiled);
    assert_eq!(cache.stats().write_errors, 1);
    check_works(probe.clone(), module);
    // The memory tier still has it.
    assert_eq!(cache.load(&*probe, bench_json()).unwrap().1, CacheSource::Memory);
}

#[test]
fn invalid_modules_are_compile_errors_and_not_cached() {
    let cache = ModuleCache::in_memory();
    let probe = Probe::new(true);
    assert!(matches!(cache.load(&*probe, b"\0asm junk"), Err(wasmux::Error::Compile { .. })));
    assert!(matches!(cache.load(&*probe, b"\0asm junk"), Err(wasmux::Error::Compile { .. })));
    assert_eq!(probe.compiles(), 2);
}

/// One request through an instance of bench-json: it summarizes the JSON body in a header.
fn summarizes_a_body(compiled: &Arc<wasmux::CompiledPlugin>) {
    let mut plugin = compiled.instantiate().unwrap();
    let id = plugin.http_stream().unwrap();
    plugin.request_headers(id, HeaderMap::from_pairs([(":path", "/")]), false).unwrap();
    plugin.request_body(id, b"[1, [2, [3]]]", true).unwrap();
    let state = plugin.vm().http(id).unwrap();
    assert_eq!(state.request_headers.get(b"x-json-summary"), Some(&b"keys=0 depth=3 redacted=0 bytes=11"[..]));
}

/// Loads bench-json twice through one in-memory cache, with snapshots under `snapshot`; each
/// load is checked by `check`, and its instances must run the filter. Returns the cache.
fn load_twice(snapshot: wasmux::SnapshotPolicy, check: impl Fn(usize, &wasmux::CompiledPlugin)) -> ModuleCache {
    let cache = ModuleCache::in_memory();
    let options = PluginOptions {
        plugin_configuration: b"{}".to_vec(),
        services: Services { log: Arc::new(MemoryLog::default()), ..Services::default() },
        snapshot,
        ..PluginOptions::default()
    };
    for round in 0..2 {
        let compiled = wasmux::Runtime::default().load_cached(bench_json(), options.clone(), &cache).unwrap();
        check(round, &compiled);
        summarizes_a_body(&compiled);
    }
    cache
}

#[test]
fn runtime_load_cached_runs_the_filter() {
    let cache = load_twice(wasmux::SnapshotPolicy::Off, |_, _| {});
    assert_eq!(cache.stats(), stats(1, 0, 1, 0));
}

/// A plugin loaded with a snapshot through a cache caches both of its modules (the instrumented
/// original and the snapshot); a `when_safe` snapshot of the same plugin is the same bytes from
/// one load to the next, so a second load compiles nothing, and its instances run the filter.
#[test]
fn snapshot_modules_come_from_the_cache() {
    let cache = load_twice(wasmux::SnapshotPolicy::WhenSafe, |round, compiled| {
        assert!(
            matches!(compiled.snapshot_status(), wasmux::SnapshotStatus::Taken { .. }),
            "round {round}: {}",
            compiled.snapshot_status()
        );
    });
    assert_eq!(cache.stats(), stats(2, 0, 2, 0));
}

/// `keep_compiled` hands out the same compiled module again, also on engines that cannot
/// serialize, without compiling or deserializing.
#[test]
fn kept_modules_are_compiled_once() {
    let wasm = wat::parse_str(r#"(module (func (export "f")))"#).expect("wat");
    for runtime in wasmux::Runtime::available().iter().filter(|r| r.runs_wasm()) {
        let engine = runtime.engine().expect("engine");
        let cache = ModuleCache::in_memory().memory_capacity(0).keep_compiled();
        let (first, source) = cache.load(&*engine, &wasm).expect("compiles");
        assert_eq!(source, CacheSource::Compiled, "{runtime}");
        let (again, source) = cache.load(&*engine, &wasm).expect("loads");
        assert_eq!(source, CacheSource::Memory, "{runtime}");
        assert!(Arc::ptr_eq(&first, &again), "{runtime}: the same module");
        assert_eq!((cache.stats().misses, cache.stats().memory_hits), (1, 1), "{runtime}");
    }
}

/// Every engine that serializes (wasmtime, wasmer's cranelift and singlepass) loads a filter
/// from the disk tier in a later process's cache, and the loaded module runs it the same way.
#[test]
fn engines_that_serialize_start_warm_from_disk() {
    let bytes = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/fixtures/wasm/headers.wasip1.wasm"),
    )
    .expect("headers fixture");
    for &runtime in wasmux::Runtime::available().iter().filter(|r| r.runs_wasm()) {
        let engine = runtime.engine().expect("engine");
        let compiled = engine.compile(&bytes).expect("compiles");
        if engine.serialize(&*compiled).is_none() {
            continue;
        }
        let dir = std::env::temp_dir().join(format!("wasmux-warm-{}-{}", runtime.name(), std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let run = |cache: &ModuleCache| {
            let plugin = runtime.load_cached(&bytes, PluginOptions::default(), cache).expect("loads");
            let mut p = plugin.instantiate().expect("starts");
            let id = p.http_stream().expect("stream");
            let headers = HeaderMap::from_pairs([(":path", "/hello")]);
            let action = p.request_headers(id, headers, true).expect("runs");
            let seen =
                p.vm().http(id).expect("stream state").request_headers.get(b"x-wasmux-request").map(<[u8]>::to_vec);
            (action, seen)
        };
        let cold = ModuleCache::on_disk(&dir).expect("cache dir");
        let first = run(&cold);
        assert_eq!(cold.stats().misses, 1, "{runtime}");
        let warm = ModuleCache::on_disk(&dir).expect("cache dir");
        let second = run(&warm);
        assert_eq!((warm.stats().disk_hits, warm.stats().misses), (1, 0), "{runtime}: {:?}", warm.stats());
        assert_eq!(first, second, "{runtime}");
        assert_eq!(second.1.as_deref(), Some(&b"seen"[..]), "{runtime}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
