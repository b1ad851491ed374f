//! Guest-memory helpers shared by every host function, written once over [`Guest`].
//!
//! Every guest range is bounds-checked here; a bad range becomes `INVALID_MEMORY_ACCESS` for the
//! guest, never a host panic.

use crate::state::Restriction;
use crate::vm::{Guest, GuestMemory};
use crate::{Error, HostState, Refused, Status, TrapKind};

/// Why a host function stopped early: a raw status/errno for the guest, or a trap.
#[derive(Debug)]
pub(crate) enum Fail {
    /// A value returned to the guest as the function's result.
    Raw(u32),
    /// A trap that ends the whole callback.
    Trap(Error),
}

impl From<Status> for Fail {
    fn from(s: Status) -> Self {
        Self::Raw(s as u32)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Self::Trap(e)
    }
}

/// Result of a host function implementation.
pub(crate) type HostResult<T = Status> = Result<T, Fail>;

/// The answer to a request an embedder service (or the host state) refused: its status, or,
/// for a quota, the quota's status once the refusal is counted (a trap for a guest past
/// [`Quotas::max_violations_per_callback`](crate::Quotas)).
#[cold]
pub(crate) fn refused(state: &mut HostState, r: Refused) -> HostResult {
    match r {
        Refused::Status(s) => Ok(s),
        Refused::Quota(q) => Ok(state.refuse(q)?),
    }
}

/// Checks that `[ptr, ptr+len)` lies inside guest memory.
pub(crate) fn check_range(cx: &mut (impl Guest + ?Sized), ptr: u64, len: u64) -> Result<(), Status> {
    let end = ptr.checked_add(len).ok_or(Status::InvalidMemoryAccess)?;
    if end > cx.memory_size() {
        return Err(Status::InvalidMemoryAccess);
    }
    Ok(())
}

/// Reads a guest byte range. `(any, 0)` is the empty slice.
pub(crate) fn read_bytes(cx: &mut (impl Guest + ?Sized), ptr: u64, len: u64) -> Result<Vec<u8>, Status> {
    if len == 0 {
        return Ok(Vec::new());
    }
    if let Some(mem) = cx.memory() {
        return mem.get(ptr, len).map(<[u8]>::to_vec).ok_or(Status::InvalidMemoryAccess);
    }
    check_range(cx, ptr, len)?;
    let len = usize::try_from(len).map_err(|_| Status::InvalidMemoryAccess)?;
    let mut buf = vec![0; len];
    cx.read(ptr, &mut buf).map_err(|_| Status::InvalidMemoryAccess)?;
    Ok(buf)
}

/// Bytes copied out of guest memory or host state: inline when small (most header names and
/// values), so the hot host functions do not allocate.
pub(crate) enum Scratch {
    Inline { buf: [u8; Self::INLINE], len: usize },
    Heap(Vec<u8>),
}

impl Scratch {
    const INLINE: usize = 64;

    pub(crate) fn from_slice(data: &[u8]) -> Self {
        if data.len() <= Self::INLINE {
            let mut buf = [0; Self::INLINE];
            buf[..data.len()].copy_from_slice(data);
            Self::Inline { buf, len: data.len() }
        } else {
            Self::Heap(data.to_vec())
        }
    }
}

impl std::ops::Deref for Scratch {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Inline { buf, len } => &buf[..*len],
            Self::Heap(v) => v,
        }
    }
}

/// Reads a guest byte range into a [`Scratch`] (no allocation for small ranges).
pub(crate) fn read_scratch(cx: &mut (impl Guest + ?Sized), ptr: u64, len: u64) -> Result<Scratch, Status> {
    if len > Scratch::INLINE as u64 {
        return read_bytes(cx, ptr, len).map(Scratch::Heap);
    }
    let len = len as usize;
    let mut buf = [0; Scratch::INLINE];
    if len > 0 {
        // One memory lookup: the lent memory bounds the range (and the engine caches its size).
        if let Some(mem) = cx.memory() {
            buf[..len].copy_from_slice(mem.get(ptr, len as u64).ok_or(Status::InvalidMemoryAccess)?);
        } else {
            check_range(cx, ptr, len as u64)?;
            cx.read(ptr, &mut buf[..len]).map_err(|_| Status::InvalidMemoryAccess)?;
        }
    }
    Ok(Scratch::Inline { buf, len })
}

/// Writes bytes into guest memory.
pub(crate) fn write_bytes(cx: &mut (impl Guest + ?Sized), ptr: u64, data: &[u8]) -> Result<(), Status> {
    cx.write(ptr, data).map_err(|_| Status::InvalidMemoryAccess)
}

/// Writes one native word (4 bytes on wasm32, 8 for native filters), little-endian.
pub(crate) fn write_word(cx: &mut (impl Guest + ?Sized), ptr: u64, value: u64) -> Result<(), Status> {
    if cx.word_size() == 8 {
        write_bytes(cx, ptr, &value.to_le_bytes())
    } else {
        let v = u32::try_from(value).map_err(|_| Status::InvalidMemoryAccess)?;
        write_bytes(cx, ptr, &v.to_le_bytes())
    }
}

/// Writes a little-endian u32 (fixed 4 bytes regardless of word size).
pub(crate) fn write_u32(cx: &mut (impl Guest + ?Sized), ptr: u64, value: u32) -> Result<(), Status> {
    write_bytes(cx, ptr, &value.to_le_bytes())
}

/// Writes a little-endian u64.
pub(crate) fn write_u64(cx: &mut (impl Guest + ?Sized), ptr: u64, value: u64) -> Result<(), Status> {
    write_bytes(cx, ptr, &value.to_le_bytes())
}

/// Reads a UTF-8 string (lossy).
pub(crate) fn read_string(cx: &mut (impl Guest + ?Sized), ptr: u64, len: u64) -> Result<String, Status> {
    let b = read_bytes(cx, ptr, len)?;
    Ok(String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// Calls the guest allocator for `size` bytes.
///
/// A missing allocator or a null pointer is `INVALID_MEMORY_ACCESS` (and so is a block that
/// does not fit in memory, when the caller writes it); a trap inside the allocator ends the
/// callback.
///
/// While the allocator runs, the guest may call only the host functions proxy-wasm-cpp-host
/// allows there (logging and what language runtimes need to allocate): the host never
/// recurses through the guest, so its native stack cannot overflow from guest input.
pub(crate) fn alloc(cx: &mut (impl Guest + ?Sized), size: u64) -> HostResult<u64> {
    let state = cx.state();
    let Some(malloc) = state.exports.allocator else {
        return Err(Status::InvalidMemoryAccess.into());
    };
    if state.restriction == Restriction::Allocator {
        // Unreachable (the allocator cannot call a host function that allocates), kept as
        // the bound on re-entrant depth should a future host function try.
        return Err(Error::new_trap(state.engine, TrapKind::Restricted, "nested call of the guest allocator").into());
    }
    let outer = std::mem::replace(&mut state.restriction, Restriction::Allocator);
    let r = cx.call(malloc, &[size]);
    cx.state().restriction = outer;
    let ptr = r?.unwrap_or(0);
    if ptr == 0 {
        return Err(Status::InvalidMemoryAccess.into());
    }
    // The block's range is checked by the write that fills it.
    Ok(ptr)
}

/// Hands a host buffer to the guest: allocate in the guest, copy, and write `(ptr, len)` into
/// the two out-pointers. Empty data writes `(0, 0)` without calling the allocator.
pub(crate) fn copy_out(cx: &mut (impl Guest + ?Sized), data: &[u8], out_ptr: u64, out_len: u64) -> HostResult {
    if let Some(status) = check_out(cx, data.len(), out_ptr, out_len)? {
        return Ok(status);
    }
    let ptr = alloc(cx, data.len() as u64)?;
    fill_out(cx, ptr, data, out_ptr, out_len)
}

/// [`copy_out`] for `len` bytes that live in host state, copied straight from there into the
/// guest: `fetch` finds them again once the guest allocator has run. The allocator is guest
/// code and may call host functions: if it changed what `fetch` returns, the new bytes are
/// handed out instead (NOT_FOUND when they are gone).
#[inline(always)]
pub(crate) fn copy_out_from(
    cx: &mut (impl Guest + ?Sized),
    len: usize,
    out_ptr: u64,
    out_len: u64,
    fetch: impl Fn(&mut HostState) -> Option<&[u8]>,
) -> HostResult {
    if let Some(status) = check_out(cx, len, out_ptr, out_len)? {
        return Ok(status);
    }
    let ptr = alloc(cx, len as u64)?;
    let word = cx.word_size();
    // Straight from host state into lent memory, when the bytes are still the `len` announced.
    if let (Some(mut mem), state) = cx.memory_and_state()
        && let Some(data) = fetch(state).filter(|data| data.len() == len)
        && let Some(()) = put_out(&mut mem, word, data, ptr, out_ptr, out_len)
    {
        return Ok(Status::Ok);
    }
    match fetch(cx.state()).map(Scratch::from_slice) {
        Some(data) if data.len() == len => fill_out(cx, ptr, &data, out_ptr, out_len),
        Some(changed) => copy_out(cx, &changed, out_ptr, out_len),
        None => Ok(Status::NotFound),
    }
}

/// The checks before an allocation for [`copy_out`]: both out-pointers in bounds, and `(0, 0)`
/// written at once for empty data (`Some(OK)`: nothing left to do).
fn check_out(cx: &mut (impl Guest + ?Sized), len: usize, out_ptr: u64, out_len: u64) -> HostResult<Option<Status>> {
    let word = cx.word_size() as u64;
    check_range(cx, out_ptr, word)?;
    check_range(cx, out_len, word)?;
    if len > 0 {
        return Ok(None);
    }
    write_word(cx, out_ptr, 0)?;
    write_word(cx, out_len, 0)?;
    Ok(Some(Status::Ok))
}

/// The end of [`copy_out`]: `data` into the block at `ptr`, then `(ptr, len)`.
fn fill_out(cx: &mut (impl Guest + ?Sized), ptr: u64, data: &[u8], out_ptr: u64, out_len: u64) -> HostResult {
    let word = cx.word_size();
    if let Some(mut mem) = cx.memory()
        && let Some(()) = put_out(&mut mem, word, data, ptr, out_ptr, out_len)
    {
        return Ok(Status::Ok);
    }
    write_bytes(cx, ptr, data)?;
    write_word(cx, out_ptr, ptr)?;
    write_word(cx, out_len, data.len() as u64)?;
    Ok(Status::Ok)
}

/// Runs `f` on the guest bytes at `[ptr, ptr+len)` and the host state: the bytes are borrowed
/// from guest memory where the engine lends it, else copied once. `(any, 0)` is empty.
#[inline(always)]
pub(crate) fn with_guest_bytes<R>(
    cx: &mut (impl Guest + ?Sized),
    ptr: u64,
    len: u64,
    f: impl FnOnce(&[u8], &mut HostState) -> R,
) -> Result<R, Status> {
    if let (Some(mem), state) = cx.memory_and_state() {
        return Ok(f(mem.get(ptr, len).ok_or(Status::InvalidMemoryAccess)?, state));
    }
    let bytes = read_scratch(cx, ptr, len)?;
    Ok(f(&bytes, cx.state()))
}

/// [`with_guest_bytes`] for two ranges at once (a name and a value).
pub(crate) fn with_guest_pair<R>(
    cx: &mut (impl Guest + ?Sized),
    (a, a_len): (u64, u64),
    (b, b_len): (u64, u64),
    f: impl FnOnce(&[u8], &[u8], &mut HostState) -> R,
) -> Result<R, Status> {
    if let (Some(mem), state) = cx.memory_and_state() {
        let first = mem.get(a, a_len).ok_or(Status::InvalidMemoryAccess)?;
        let second = mem.get(b, b_len).ok_or(Status::InvalidMemoryAccess)?;
        return Ok(f(first, second, state));
    }
    let first = read_scratch(cx, a, a_len)?;
    let second = read_scratch(cx, b, b_len)?;
    Ok(f(&first, &second, cx.state()))
}

/// The end of [`copy_out`] in lent memory: the data, then the two words (`word` bytes each).
/// `None` when a range is out of bounds (the caller falls back to the checked path, which
/// reports it).
fn put_out(mem: &mut GuestMemory<'_>, word: usize, data: &[u8], ptr: u64, out_ptr: u64, out_len: u64) -> Option<()> {
    mem.get_mut(ptr, data.len() as u64)?.copy_from_slice(data);
    put_word(mem, word, out_ptr, ptr)?;
    put_word(mem, word, out_len, data.len() as u64)
}

/// Writes one little-endian word of `word` bytes (4 or 8) into lent memory.
fn put_word(mem: &mut GuestMemory<'_>, word: usize, at: u64, value: u64) -> Option<()> {
    let dst = mem.get_mut(at, word as u64)?;
    if word == 8 {
        dst.copy_from_slice(&value.to_le_bytes());
    } else {
        dst.copy_from_slice(&u32::try_from(value).ok()?.to_le_bytes());
    }
    Some(())
}
