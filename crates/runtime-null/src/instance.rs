//! A native instance: calls into the library, the [`Guest`] view of native memory, and the
//! per-thread ownership of the SDK's state.

use std::collections::{BTreeSet, HashMap};
use std::ffi::c_void;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::thread::{self, ThreadId};

use wasmux_abi::services::{LogLine, LogSink};
use wasmux_abi::{
    AbiVersion, Callback, Error, FuncRef, Guest, GuestMemory, HostState, IdHasher, NativeMemory, OutOfBounds, Result,
    Services, VmEnv, WasmInstance,
};

use crate::ENGINE_NAME;
use crate::hostcalls::Current;
use crate::module::{Library, NullModule, engine_err};

/// What an instance left in the SDK's per-thread state: live contexts (id → parent, 0 for a
/// root) and callout tokens that the SDK still maps to a context.
#[derive(Debug, Default)]
struct Debris {
    contexts: HashMap<u32, u32, BuildHasherDefault<IdHasher>>,
    http_calls: BTreeSet<u32>,
    grpc: BTreeSet<u32>,
}

impl Debris {
    /// Follows a completed call of an export.
    fn observe(&mut self, callback: Option<Callback>, args: &[u64]) {
        let arg = |i: usize| args.get(i).map_or(0, |&a| a as u32);
        match callback {
            Some(Callback::OnContextCreate) => {
                self.contexts.insert(arg(0), arg(1));
            }
            Some(Callback::OnDelete) => {
                self.contexts.remove(&arg(0));
            }
            Some(Callback::OnHttpCallResponse) => {
                self.http_calls.remove(&arg(1));
            }
            Some(Callback::OnGrpcClose) => {
                self.grpc.remove(&arg(1));
            }
            _ => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.contexts.is_empty() && self.http_calls.is_empty() && self.grpc.is_empty()
    }
}

/// The state of one instance, reached by host functions through a raw pointer while a call runs.
pub(crate) struct Inner {
    state: HostState,
    lib: Arc<Library>,
    abi: AbiVersion,
    owner: ThreadId,
    debris: Debris,
    /// An error raised by a host function during the running call.
    failed: Option<Error>,
}

/// Which (library, thread) pairs have a live instance, or debris left by an instance dropped on
/// another thread (cleaned up by the next instance on the owning thread).
enum Slot {
    Live,
    Debris(Arc<Library>, Debris),
}

type SlotKey = (usize, ThreadId);

/// This thread's id, without touching the `Thread` handle's reference count on every call.
fn thread_id() -> ThreadId {
    thread_local! {
        static ID: ThreadId = thread::current().id();
    }
    ID.try_with(|id| *id).unwrap_or_else(|_| thread::current().id())
}

static SLOTS: LazyLock<Mutex<HashMap<SlotKey, Slot>>> = LazyLock::new(Mutex::default);

fn slots() -> std::sync::MutexGuard<'static, HashMap<SlotKey, Slot>> {
    SLOTS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A [`WasmInstance`] running a native filter library on the thread that created it.
pub struct NullInstance {
    inner: Box<Inner>,
}

impl std::fmt::Debug for NullInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NullInstance")
            .field("library", &self.inner.lib.path)
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

impl NullInstance {
    /// Claims the library's SDK state on this thread.
    pub(crate) fn new(module: &NullModule, lib: Arc<Library>, state: HostState) -> Result<Self> {
        let owner = thread::current().id();
        let key = (lib.key, owner);
        let leftover = {
            let mut slots = slots();
            match slots.insert(key, Slot::Live) {
                None => None,
                Some(Slot::Debris(lib, debris)) => Some((lib, debris)),
                Some(Slot::Live) => {
                    return Err(engine_err(format!(
                        "{} already has a live instance on this thread: the SDK keeps its state per \
                         thread and per library, so a thread runs one instance of a library at a time \
                         (drop the other instance, use another thread, or load another copy of the \
                         library)",
                        lib.path.display()
                    )));
                }
            }
        };
        if let Some((lib, debris)) = leftover {
            // An instance of this library was dropped on another thread: its contexts are still
            // in this thread's SDK state. Clear them before the new instance starts.
            clear(lib, module.abi(), debris);
        }
        let inner = Inner { state, abi: module.abi(), lib, owner, debris: Debris::default(), failed: None };
        Ok(Self { inner: Box::new(inner) })
    }

    fn check_thread(&self) -> Result<()> {
        let here = thread_id();
        if here == self.inner.owner {
            return Ok(());
        }
        Err(engine_err(format!(
            "instance of {} created on {:?} called from {:?}: native SDK state is per thread, so a null \
             instance runs only on the thread that created it",
            self.inner.lib.path.display(),
            self.inner.owner,
            here
        )))
    }
}

impl Drop for NullInstance {
    fn drop(&mut self) {
        let key = (self.inner.lib.key, self.inner.owner);
        let debris = std::mem::take(&mut self.inner.debris);
        if thread::current().id() == self.inner.owner {
            clear(self.inner.lib.clone(), self.inner.abi, debris);
            slots().remove(&key);
        } else if debris.is_empty() {
            slots().remove(&key);
        } else {
            // The SDK state lives on the owner thread: leave the cleanup to the next instance
            // created there.
            slots().insert(key, Slot::Debris(self.inner.lib.clone(), debris));
        }
    }
}

/// Deletes every context an instance left in the SDK, then makes the SDK forget its pending
/// callout tokens, so that the next instance of the library on this thread starts clean (the
/// ids and tokens of a new instance start at 1 again). Contexts go first, so forgetting a token
/// runs no filter code. The filter's destructors run against a scratch host state whose
/// services go nowhere: like dropping a wasm instance, this is invisible to the embedder.
/// Errors are logged: this runs on drop.
fn clear(lib: Arc<Library>, abi: AbiVersion, debris: Debris) {
    if debris.is_empty() {
        return;
    }
    let mut calls: Vec<(&str, Vec<u64>)> = Vec::new();
    // In id order, streams before roots.
    let mut contexts: Vec<(u32, u32)> = debris.contexts.iter().map(|(&id, &parent)| (id, parent)).collect();
    contexts.sort_unstable();
    let streams = contexts.iter().filter(|(_, parent)| *parent != 0);
    let roots = contexts.iter().filter(|(_, parent)| *parent == 0);
    for &(id, _) in streams.chain(roots) {
        calls.push(("proxy_on_delete", vec![u64::from(id)]));
    }
    for &token in &debris.http_calls {
        calls.push(("proxy_on_http_call_response", vec![0, u64::from(token), 0, 0, 0]));
    }
    for &token in &debris.grpc {
        calls.push(("proxy_on_grpc_close", vec![0, u64::from(token), 0]));
    }
    let mut scratch = Inner {
        state: HostState::new(abi, SILENT.clone()),
        lib,
        abi,
        owner: thread::current().id(),
        debris: Debris::default(),
        failed: None,
    };
    for (name, args) in calls {
        let Some(func) = resolve(&scratch, name) else { continue };
        let ptr: *mut Inner = &raw mut scratch;
        let _current = Current::enter(ptr);
        // SAFETY: `ptr` comes from `scratch`, which is not used until the call returns.
        if let Err(e) = unsafe { call_export(ptr, func, &args) } {
            tracing::warn!(target: "wasmux::null", "cleaning up {}: {name} failed: {e}", scratch.lib.path.display());
        }
    }
}

/// The environment of scratch states (cleaning up, host calls outside any call): logs are
/// dropped, and every other service is a private in-memory default.
pub(crate) fn silent_env() -> Arc<VmEnv> {
    SILENT.clone()
}

static SILENT: LazyLock<Arc<VmEnv>> = LazyLock::new(|| {
    Arc::new(VmEnv { services: Services { log: Arc::new(Discard), ..Services::default() }, ..VmEnv::default() })
});

/// A log sink that drops every line.
#[derive(Debug)]
struct Discard;

impl LogSink for Discard {
    fn log(&self, _line: &LogLine<'_>) {}
}

/// Resolves an export: an index into the library's table, the same for every instance.
fn resolve(inner: &Inner, name: &str) -> Option<FuncRef> {
    inner.lib.find(name).map(FuncRef)
}

/// Calls a resolved export: the top-level call of [`WasmInstance::call`] and the re-entrant
/// calls of [`Guest::call`] alike. The instance must be current on this thread.
///
/// # Safety
/// `inner` points to a live [`Inner`] that nothing else borrows across this call: only
/// short-lived references are made from it, and host functions make their own.
#[inline(always)]
unsafe fn call_export(inner: *mut Inner, func: FuncRef, args: &[u64]) -> Result<Option<u64>> {
    let export = {
        // SAFETY: the function's contract; this borrow ends before the native call.
        let inner = unsafe { &*inner };
        let Some(export) = inner.lib.export(func.0) else {
            return Err(engine_err(format!("unknown function reference {}", func.0)));
        };
        export
    };
    if args.len() != export.native.arity {
        return Err(engine_err(format!(
            "`{}` takes {} arguments, called with {}",
            export.name,
            export.native.arity,
            args.len()
        )));
    }
    let addr: *const c_void = std::ptr::with_exposed_provenance(export.addr);
    // SAFETY: `addr` is the library's definition of `export.name` (the library stays loaded:
    // `inner` holds it), `native` is the SDK's C type for that name, and the arity was checked.
    let ret = unsafe { (export.native.call)(addr, args) };
    // SAFETY: the function's contract; the native call has returned, so host functions hold no
    // reference any more.
    let inner = unsafe { &mut *inner };
    inner.debris.observe(export.callback, args);
    if let Some(e) = inner.failed.take() {
        return Err(e);
    }
    Ok(ret)
}

impl WasmInstance for NullInstance {
    fn engine(&self) -> &'static str {
        ENGINE_NAME
    }

    fn state(&mut self) -> &mut HostState {
        &mut self.inner.state
    }

    fn lookup(&mut self, name: &str) -> Option<FuncRef> {
        resolve(&self.inner, name)
    }

    fn call(&mut self, func: FuncRef, args: &[u64]) -> Result<Option<u64>> {
        self.check_thread()?;
        let ptr: *mut Inner = &raw mut *self.inner;
        let _current = Current::enter(ptr);
        // SAFETY: `ptr` comes from `&mut self`, which is not used until the call returns.
        unsafe { call_export(ptr, func, args) }
    }

    fn memory_size(&mut self) -> u64 {
        u64::MAX
    }

    fn read(&mut self, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        read(ptr, out)
    }

    fn interrupt_handle(&self) -> Arc<dyn Fn() + Send + Sync> {
        // Native code cannot be interrupted: the null engine has no deadlines.
        Arc::new(|| {})
    }
}

/// The guest seen from a host function: the current instance, through its raw pointer.
pub(crate) struct NullGuest {
    inner: *mut Inner,
    memory: AddressSpace,
}

impl NullGuest {
    /// A view of the current instance.
    pub(crate) fn new(inner: *mut Inner) -> Self {
        Self { inner, memory: AddressSpace }
    }

    fn inner(&mut self) -> &mut Inner {
        // SAFETY: `inner` is the current instance, set by `Current` for the running call; the
        // call that set it holds no reference into it while native code runs, and this borrow
        // is tied to `&mut self`, so host functions see one reference at a time.
        unsafe { &mut *self.inner }
    }

    /// Records a callout token the SDK now maps to a context (read from the out-pointer the
    /// host function just wrote).
    pub(crate) fn issued(&mut self, grpc: bool, out: Option<u64>) {
        let mut token = [0; 4];
        if out.is_none_or(|p| read(p, &mut token).is_err()) {
            return;
        }
        let token = u32::from_le_bytes(token);
        let debris = &mut self.inner().debris;
        if grpc {
            debris.grpc.insert(token);
        } else {
            debris.http_calls.insert(token);
        }
    }

    /// Keeps a host function's error for the end of the running call.
    pub(crate) fn fail(&mut self, e: Error) {
        self.inner().failed.get_or_insert(e);
    }
}

impl Guest for NullGuest {
    fn state(&mut self) -> &mut HostState {
        &mut self.inner().state
    }

    fn word_size(&self) -> usize {
        8
    }

    fn memory_size(&mut self) -> u64 {
        u64::MAX
    }

    fn read(&mut self, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        read(ptr, out)
    }

    fn write(&mut self, ptr: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        write(ptr, data)
    }

    fn memory_and_state(&mut self) -> (Option<GuestMemory<'_>>, &mut HostState) {
        // SAFETY: as in `inner`; the memory view is a separate field and holds no reference.
        let state = unsafe { &mut (*self.inner).state };
        (Some(GuestMemory::Native(&mut self.memory)), state)
    }

    fn call(&mut self, func: FuncRef, args: &[u64]) -> Result<Option<u64>> {
        // SAFETY: the instance is current (this is a host function of its running call) and
        // no reference into it is held across the call.
        unsafe { call_export(self.inner, func, args) }
    }
}

/// A native filter's memory, lent to host functions: the process's address space.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AddressSpace;

impl NativeMemory for AddressSpace {
    fn bytes(&self, ptr: u64, len: usize) -> Option<&[u8]> {
        let addr = slice_range(ptr, len)?;
        // SAFETY: as in `read`: a pointer a native filter passes is valid for the length it
        // gives. The slice lives no longer than the host function's borrow of the guest, and
        // the filter, stopped in the host call, does not touch the range meanwhile.
        Some(unsafe { std::slice::from_raw_parts(std::ptr::with_exposed_provenance::<u8>(addr), len) })
    }

    fn bytes_mut(&mut self, ptr: u64, len: usize) -> Option<&mut [u8]> {
        let addr = slice_range(ptr, len)?;
        // SAFETY: as in `write` (out-pointers and blocks the filter's allocator returned for
        // this size are valid for writes of that length), and as in `bytes` for the lifetime.
        Some(unsafe { std::slice::from_raw_parts_mut(std::ptr::with_exposed_provenance_mut::<u8>(addr), len) })
    }
}

/// [`range`] for a slice: non-empty, and no longer than a slice may be (`isize::MAX` bytes).
fn slice_range(ptr: u64, len: usize) -> Option<usize> {
    if isize::try_from(len).is_err() {
        return None;
    }
    range(ptr, len).ok()?
}

/// Checks a native range: null with a non-zero length, or wrapping around, is out of bounds.
fn range(ptr: u64, len: usize) -> Result<Option<usize>, OutOfBounds> {
    if len == 0 {
        return Ok(None);
    }
    let addr = usize::try_from(ptr).map_err(|_| OutOfBounds)?;
    if addr == 0 || addr.checked_add(len).is_none() {
        return Err(OutOfBounds);
    }
    Ok(Some(addr))
}

/// Copies `out.len()` bytes from a native address.
pub(crate) fn read(ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
    let Some(addr) = range(ptr, out.len())? else { return Ok(()) };
    // SAFETY: the null engine trusts its filters: a pointer a native filter passes is valid
    // for the length it gives (a bad one is a bug in the filter, as in any native code). It
    // came through FFI, so its provenance was exposed. `copy` tolerates overlap.
    unsafe { std::ptr::copy(std::ptr::with_exposed_provenance::<u8>(addr), out.as_mut_ptr(), out.len()) };
    Ok(())
}

/// Copies `data` to a native address.
pub(crate) fn write(ptr: u64, data: &[u8]) -> Result<(), OutOfBounds> {
    let Some(addr) = range(ptr, data.len())? else { return Ok(()) };
    // SAFETY: as in `read`: out-pointers and buffers the filter hands over (or that its
    // allocator returned for this size) are valid for writes of that length.
    unsafe { std::ptr::copy(data.as_ptr(), std::ptr::with_exposed_provenance_mut::<u8>(addr), data.len()) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_memory_access() {
        let mut buf = [1u8, 2, 3, 4];
        let p = buf.as_mut_ptr().expose_provenance() as u64;
        let mut out = [0u8; 2];
        read(p + 1, &mut out).unwrap();
        assert_eq!(out, [2, 3]);
        write(p, &[9, 9]).unwrap();
        assert_eq!(buf, [9, 9, 3, 4]);
        assert_eq!(read(0, &mut out), Err(OutOfBounds));
        assert_eq!(write(0, &[1]), Err(OutOfBounds));
        assert_eq!(read(u64::MAX, &mut out), Err(OutOfBounds));
        // Empty ranges are fine anywhere, null included.
        read(0, &mut []).unwrap();
        write(0, &[]).unwrap();
        // Lent slices: the same checks, and no slice longer than `isize::MAX` bytes.
        let mut space = AddressSpace;
        assert_eq!(space.bytes(p + 2, 2), Some(&[3, 4][..]));
        space.bytes_mut(p, 1).unwrap()[0] = 7;
        assert_eq!(buf[0], 7);
        assert_eq!(space.bytes(0, 1), None);
        assert_eq!(space.bytes(p, usize::MAX), None);
        assert_eq!(space.bytes(1, isize::MAX as usize + 1), None);
    }

    #[test]
    fn debris_follows_contexts_and_tokens() {
        let mut d = Debris::default();
        d.observe(Some(Callback::OnContextCreate), &[1, 0]);
        d.observe(Some(Callback::OnContextCreate), &[2, 1]);
        d.http_calls.insert(7);
        d.grpc.insert(8);
        d.observe(Some(Callback::OnDelete), &[2]);
        d.observe(Some(Callback::OnHttpCallResponse), &[2, 7, 0, 0, 0]);
        d.observe(Some(Callback::OnGrpcClose), &[2, 8, 0]);
        assert_eq!(d.contexts.into_iter().collect::<Vec<_>>(), [(1, 0)]);
        assert!(d.http_calls.is_empty() && d.grpc.is_empty());
    }
}
