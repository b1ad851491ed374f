//! A compiled-module cache: engine-serialized artifacts in memory and on disk.
//!
//! Compiling a filter of a few hundred KB takes tens of milliseconds on an optimizing engine;
//! loading the engine's own serialized form of the same module takes about a millisecond. A
//! [`ModuleCache`] keeps those artifacts, so a proxy that restarts, reloads a plugin or starts
//! another process with the same filter skips the compiler. It is opt-in: nothing in wasmux
//! caches unless the embedder passes a cache.
//!
//! # Keys
//!
//! An artifact is stored under a [`CacheKey`]: the engine's
//! [`fingerprint`](WasmEngine::fingerprint) (engine name and version, and every setting that
//! changes generated code) and the SHA-256 of the module bytes. Changing the engine version, a
//! code-affecting setting or one byte of the module gives another key, so a stale artifact is
//! never even looked at. Engines also check their own artifacts (wasmtime rejects one from
//! another version or configuration).
//!
//! # Tiers
//!
//! - **Memory**: artifacts of this process, bounded by [`ModuleCache::memory_capacity`]
//!   (oldest dropped first). A hit skips compilation and file I/O.
//! - **Disk** ([`ModuleCache::on_disk`]): one file per key in a directory, shared between
//!   processes. Files are written atomically (a temporary file renamed into place), start with
//!   a header repeating the key, and carry a CRC-32 of the artifact that is checked on every
//!   read (a checksum against accidents; a cryptographic hash would add half a millisecond per
//!   load of a 1 MB artifact and stop no attacker who can write the file anyway).
//!
//! A miss compiles, then stores the artifact in both tiers. A truncated, corrupted, misplaced
//! or incompatible artifact is treated as a miss (counted in [`CacheStats::rejected`], the bad
//! file removed) and the module is recompiled: a broken cache never fails a load and never
//! crashes. Engines that cannot serialize (see [`WasmEngine::serialize`]) compile every time.
//!
//! # Trust
//!
//! An artifact is machine code the engine runs without re-validating it. The checks above stop
//! accidents (a crash mid-write, a full disk, bit rot, a file copied from another machine), not
//! an attacker: whoever can write the cache directory can make the proxy run arbitrary code, as
//! with wasmtime's own compilation cache. Keep the directory private to the proxy's user.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sha2::{Digest, Sha256};
use wasmux_abi::{Result, WasmEngine, WasmModule};

use crate::plugin::{check_size, compile_within};
use crate::{CompiledPlugin, PluginOptions, Runtime};

/// File magic and format version of an on-disk artifact.
const MAGIC: &[u8; 8] = b"WASMUXC1";

/// The longest fingerprint a file header may carry (a sanity bound for corrupt headers).
const MAX_FINGERPRINT: usize = 4096;

/// Where an artifact is stored: the engine build and settings, and the module.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// [`WasmEngine::fingerprint`] of the engine.
    pub fingerprint: String,
    /// SHA-256 of the module bytes.
    pub module_sha256: [u8; 32],
}

impl CacheKey {
    /// The key of `bytes` compiled by `engine`.
    pub fn new(engine: &dyn WasmEngine, bytes: &[u8]) -> Self {
        Self { fingerprint: engine.fingerprint(), module_sha256: Sha256::digest(bytes).into() }
    }

    /// The file name of the key on disk: the engine name, then a hash of the whole key.
    fn file_name(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.fingerprint.as_bytes());
        h.update([0]);
        h.update(self.module_sha256);
        let engine: String = self.fingerprint.chars().take_while(|c| c.is_ascii_alphanumeric()).take(32).collect();
        format!("{}-{}.artifact", if engine.is_empty() { "engine" } else { &engine }, hex(&h.finalize()))
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Where [`ModuleCache::load`] found a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheSource {
    /// An artifact in the memory tier.
    Memory,
    /// An artifact file in the cache directory.
    Disk,
    /// Not cached (or rejected): compiled, and the artifact stored.
    Compiled,
    /// Compiled; the engine cannot serialize modules, so nothing was stored.
    Uncacheable,
}

/// Counters of a [`ModuleCache`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Loads served from memory.
    pub memory_hits: u64,
    /// Loads served from disk.
    pub disk_hits: u64,
    /// Loads that compiled (cache miss, or an engine that cannot serialize).
    pub misses: u64,
    /// Artifacts found but refused (corrupt, truncated, incompatible); each also compiles.
    pub rejected: u64,
    /// Artifacts that could not be written to disk (the load still succeeded).
    pub write_errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    misses: AtomicU64,
    rejected: AtomicU64,
    write_errors: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Artifact bytes as read or produced: `bytes[start..]` (a file keeps its header in front, so
/// that a disk hit needs no copy).
#[derive(Debug, Clone)]
struct Artifact {
    bytes: Arc<Vec<u8>>,
    start: usize,
}

impl Artifact {
    fn new(bytes: Vec<u8>) -> Self {
        Self { bytes: Arc::new(bytes), start: 0 }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    fn len(&self) -> usize {
        self.bytes.len() - self.start
    }
}

/// The memory tier: artifacts by key, evicted oldest first beyond a byte budget.
#[derive(Debug, Default)]
struct MemoryTier {
    artifacts: HashMap<CacheKey, Artifact>,
    order: VecDeque<CacheKey>,
    bytes: usize,
}

impl MemoryTier {
    fn insert(&mut self, key: CacheKey, artifact: Artifact, capacity: usize) {
        if artifact.len() > capacity {
            return;
        }
        self.remove(&key);
        self.bytes += artifact.len();
        self.order.push_back(key.clone());
        self.artifacts.insert(key, artifact);
        while self.bytes > capacity {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(a) = self.artifacts.remove(&old) {
                self.bytes -= a.len();
            }
        }
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(a) = self.artifacts.remove(key) {
            self.bytes -= a.len();
            self.order.retain(|k| k != key);
        }
    }
}

/// An opt-in cache of compiled modules (engine-serialized artifacts), in memory and optionally
/// on disk. Share one per process (`Arc<ModuleCache>`); it is `Sync`.
///
/// ```no_run
/// use std::sync::Arc;
/// use wasmux::{ModuleCache, PluginOptions, Runtime};
///
/// let cache = Arc::new(ModuleCache::on_disk("/var/cache/my-proxy/wasm")?);
/// let bytes = std::fs::read("filter.wasm")?;
/// // Compiles the first time; later loads (and later processes) deserialize instead.
/// let compiled = Runtime::default().load_cached(&bytes, PluginOptions::default(), &cache)?;
/// let plugin = compiled.instantiate()?;
/// # let _ = plugin;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ModuleCache {
    memory: Mutex<MemoryTier>,
    capacity: usize,
    dir: Option<PathBuf>,
    counters: Counters,
    /// Compiled modules themselves, kept for reuse ([`Self::keep_compiled`]); `None`: off.
    compiled: Option<Mutex<HashMap<CacheKey, Arc<dyn WasmModule>>>>,
}

impl fmt::Debug for ModuleCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModuleCache")
            .field("dir", &self.dir)
            .field("capacity", &self.capacity)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Default for ModuleCache {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl ModuleCache {
    /// Default byte budget of the memory tier: 256 MiB of artifacts.
    pub const DEFAULT_MEMORY_CAPACITY: usize = 256 << 20;

    /// A cache with the memory tier only.
    pub fn in_memory() -> Self {
        Self {
            memory: Mutex::default(),
            capacity: Self::DEFAULT_MEMORY_CAPACITY,
            dir: None,
            counters: Counters::default(),
            compiled: None,
        }
    }

    /// Also keeps every module it loads, compiled, and hands the same module out again: no
    /// deserialization, and engines that cannot serialize (wasmer, wasmi, WAMR, V8) compile a
    /// module once. The modules stay until the cache is dropped, and their count is not
    /// bounded: for short-lived runs over a few modules (the test kit, benches), not for a
    /// long-running proxy.
    #[must_use]
    pub fn keep_compiled(mut self) -> Self {
        self.compiled = Some(Mutex::default());
        self
    }

    fn kept(&self) -> Option<MutexGuard<'_, HashMap<CacheKey, Arc<dyn WasmModule>>>> {
        self.compiled.as_ref().map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A cache with both tiers; artifacts files go in `dir`, created if missing.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn on_disk(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir: Some(dir), ..Self::in_memory() })
    }

    /// Sets the byte budget of the memory tier (0 turns it off: disk only).
    #[must_use]
    pub fn memory_capacity(mut self, bytes: usize) -> Self {
        self.capacity = bytes;
        self
    }

    /// The cache directory, if the disk tier is on.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            memory_hits: get(&c.memory_hits),
            disk_hits: get(&c.disk_hits),
            misses: get(&c.misses),
            rejected: get(&c.rejected),
            write_errors: get(&c.write_errors),
        }
    }

    /// Drops every artifact of the memory tier (files stay).
    pub fn clear_memory(&self) {
        *self.lock() = MemoryTier::default();
    }

    /// The path of `key`'s artifact file, if the disk tier is on.
    pub fn path_of(&self, key: &CacheKey) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(key.file_name()))
    }

    fn lock(&self) -> MutexGuard<'_, MemoryTier> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Compiles `bytes` on `engine`, or loads the module from the cache.
    ///
    /// # Errors
    /// Only compilation errors of a miss: a cache that cannot be read or written, or holds a bad
    /// artifact, falls back to compiling.
    pub fn load(&self, engine: &dyn WasmEngine, bytes: &[u8]) -> Result<(Arc<dyn WasmModule>, CacheSource)> {
        self.load_or(engine, bytes, || engine.compile(bytes))
    }

    /// [`Self::load`], compiling a miss with `compile`.
    fn load_or(
        &self,
        engine: &dyn WasmEngine,
        bytes: &[u8],
        compile: impl FnOnce() -> Result<Arc<dyn WasmModule>>,
    ) -> Result<(Arc<dyn WasmModule>, CacheSource)> {
        let key = CacheKey::new(engine, bytes);
        if let Some(module) = self.kept().and_then(|k| k.get(&key).cloned()) {
            Counters::bump(&self.counters.memory_hits);
            return Ok((module, CacheSource::Memory));
        }
        let (module, source) = self.load_uncompiled(engine, key.clone(), compile)?;
        if let Some(mut kept) = self.kept() {
            kept.insert(key, module.clone());
        }
        Ok((module, source))
    }

    /// [`Self::load_or`] without the compiled-module tier.
    fn load_uncompiled(
        &self,
        engine: &dyn WasmEngine,
        key: CacheKey,
        compile: impl FnOnce() -> Result<Arc<dyn WasmModule>>,
    ) -> Result<(Arc<dyn WasmModule>, CacheSource)> {
        if self.capacity > 0 {
            let artifact = self.lock().artifacts.get(&key).cloned();
            if let Some(artifact) = artifact {
                match engine.deserialize(artifact.as_slice()) {
                    Ok(module) => {
                        Counters::bump(&self.counters.memory_hits);
                        return Ok((module, CacheSource::Memory));
                    }
                    Err(e) => {
                        tracing::warn!(target: "wasmux::cache", engine = engine.name(), "cached artifact refused: {e}");
                        Counters::bump(&self.counters.rejected);
                        self.lock().remove(&key);
                    }
                }
            }
        }
        if let Some(path) = self.path_of(&key) {
            match read_artifact(&path, &key) {
                Ok(Some(artifact)) => match engine.deserialize(artifact.as_slice()) {
                    Ok(module) => {
                        Counters::bump(&self.counters.disk_hits);
                        self.remember(key, artifact);
                        return Ok((module, CacheSource::Disk));
                    }
                    Err(e) => self.reject(&path, &e.to_string()),
                },
                Ok(None) => {}
                Err(reason) => self.reject(&path, &reason),
            }
        }
        Counters::bump(&self.counters.misses);
        let module = compile()?;
        if self.capacity == 0 && self.dir.is_none() {
            // No tier would keep the artifact: do not serialize.
            return Ok((module, CacheSource::Compiled));
        }
        let Some(artifact) = engine.serialize(&*module) else {
            return Ok((module, CacheSource::Uncacheable));
        };
        if let Some(path) = self.path_of(&key)
            && let Err(e) = write_artifact(&path, &key, &artifact)
        {
            Counters::bump(&self.counters.write_errors);
            tracing::warn!(target: "wasmux::cache", path = %path.display(), "cannot write artifact: {e}");
        }
        self.remember(key, Artifact::new(artifact));
        Ok((module, CacheSource::Compiled))
    }

    /// Like [`CompiledPlugin::new`], through the cache: the module size limit applies to every
    /// load, the compile deadline to a miss.
    ///
    /// # Errors
    /// As [`CompiledPlugin::new`].
    pub fn load_plugin(
        &self,
        engine: Arc<dyn WasmEngine>,
        bytes: &[u8],
        options: PluginOptions,
    ) -> Result<Arc<CompiledPlugin>> {
        check_size(&*engine, bytes, &options.limits)?;
        let limits = options.limits.clone();
        // A snapshot's modules (the instrumented original, the snapshot) go through the cache
        // too: the same bytes give the same module.
        let compile =
            |b: &[u8]| self.load_or(&*engine, b, || compile_within(&engine, b, &limits)).map(|(module, _)| module);
        CompiledPlugin::build(engine.clone(), bytes, options, &compile)
    }

    fn remember(&self, key: CacheKey, artifact: Artifact) {
        if self.capacity > 0 {
            self.lock().insert(key, artifact, self.capacity);
        }
    }

    fn reject(&self, path: &Path, reason: &str) {
        tracing::warn!(target: "wasmux::cache", path = %path.display(), "cached artifact refused, recompiling: {reason}");
        Counters::bump(&self.counters.rejected);
        let _ = std::fs::remove_file(path);
    }
}

impl Runtime {
    /// Like [`Runtime::load`], through a module cache.
    ///
    /// # Errors
    /// As [`Runtime::load`].
    pub fn load_cached(self, bytes: &[u8], options: PluginOptions, cache: &ModuleCache) -> Result<Arc<CompiledPlugin>> {
        cache.load_plugin(self.engine()?, bytes, options)
    }
}

/// The file header: magic, fingerprint length (u32 LE), fingerprint, module SHA-256, artifact
/// CRC-32 (u32 LE), artifact length (u64 LE). The artifact follows.
fn header(key: &CacheKey, artifact: &[u8]) -> Vec<u8> {
    let fp = key.fingerprint.as_bytes();
    let mut h = Vec::with_capacity(8 + 4 + fp.len() + 32 + 4 + 8);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&u32::try_from(fp.len()).unwrap_or(u32::MAX).to_le_bytes());
    h.extend_from_slice(fp);
    h.extend_from_slice(&key.module_sha256);
    h.extend_from_slice(&crc32fast::hash(artifact).to_le_bytes());
    h.extend_from_slice(&(artifact.len() as u64).to_le_bytes());
    h
}

/// Reads and checks an artifact file: `Ok(None)` when there is none, `Err(reason)` when it is
/// unusable.
fn read_artifact(path: &Path, key: &CacheKey) -> Result<Option<Artifact>, String> {
    let file = match std::fs::read(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("unreadable: {e}")),
    };
    let start = check_header(&file, key)?;
    Ok(Some(Artifact { bytes: Arc::new(file), start }))
}

/// Checks a file's header against `key` and the artifact's CRC-32; returns where the artifact
/// starts.
fn check_header(file: &[u8], key: &CacheKey) -> Result<usize, String> {
    let mut at = 0;
    let mut take = |n: usize| -> Result<std::ops::Range<usize>, String> {
        if file.len() - at < n {
            return Err("truncated header".into());
        }
        at += n;
        Ok(at - n..at)
    };
    let word = |r: std::ops::Range<usize>| -> u64 { file[r].iter().rev().fold(0, |acc, &b| (acc << 8) | u64::from(b)) };
    if file[take(MAGIC.len())?] != *MAGIC {
        return Err("not a wasmux artifact (bad magic)".into());
    }
    let fp_len = usize::try_from(word(take(4)?)).unwrap_or(usize::MAX);
    if fp_len > MAX_FINGERPRINT {
        return Err("bad header".into());
    }
    if file[take(fp_len)?] != *key.fingerprint.as_bytes() {
        return Err("written by another engine build or configuration".into());
    }
    if file[take(32)?] != key.module_sha256 {
        return Err("artifact of another module".into());
    }
    let crc = word(take(4)?);
    let len = word(take(8)?);
    let start = at;
    let artifact = &file[start..];
    if len != artifact.len() as u64 {
        return Err(format!("truncated: artifact of {} bytes, header says {len}", artifact.len()));
    }
    if u64::from(crc32fast::hash(artifact)) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(start)
}

/// Writes an artifact file atomically: a unique temporary file in the same directory, renamed
/// over the final name. Readers see the old file, no file, or the whole new one.
fn write_artifact(path: &Path, key: &CacheKey, artifact: &[u8]) -> std::io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("artifact"),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&header(key, artifact))?;
        f.write_all(artifact)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    let r = write();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}
