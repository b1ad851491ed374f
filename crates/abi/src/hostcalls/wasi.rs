//! WASI preview1, as SDK-built filters import it, registered under both
//! `wasi_snapshot_preview1` and `wasi_unstable`.
//!
//! Filters get no files, sockets or arguments: stdout and stderr go to the filter log (INFO and
//! ERROR), clocks and randomness are real, environment variables come from the VM
//! configuration, and everything else answers with the errno a sandbox without a filesystem
//! would give.

use crate::LogLevel;
use crate::guest::{HostResult, check_range, read_bytes, write_bytes, write_u32, write_u64};
use crate::hostcalls::logging::{emit, emit_part};
use crate::vm::Guest;

/// WASI errno values used here.
pub(crate) struct Errno;
impl Errno {
    pub(crate) const SUCCESS: u32 = 0;
    pub(crate) const BADF: u32 = 8;
    pub(crate) const FAULT: u32 = 21;
    pub(crate) const INVAL: u32 = 28;
    pub(crate) const NOENT: u32 = 44;
    pub(crate) const NOSYS: u32 = 52;
    pub(crate) const NOTSUP: u32 = 58;
    pub(crate) const SPIPE: u32 = 70;
}

/// Largest `random_get` request (64 KiB).
const MAX_RANDOM: u64 = 64 << 10;

fn is_stdio(fd: u64) -> bool {
    fd == 1 || fd == 2
}

fn stdio_result(fd: u64) -> HostResult<u32> {
    Ok(if is_stdio(fd) { Errno::SUCCESS } else { Errno::BADF })
}

/// Most iovecs one `fd_write` may pass (Linux's `IOV_MAX`); more is EINVAL, as `writev`
/// answers.
const IOV_MAX: u64 = 1024;

fn write_stdio(cx: &mut (impl Guest + ?Sized), fd: u64, iovs: u64, iovs_len: u64, nwritten: u64) -> Result<u32, u32> {
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return Err(Errno::BADF),
    };
    if iovs_len > IOV_MAX {
        return Err(Errno::INVAL);
    }
    let table = read_bytes(cx, iovs, iovs_len * 8).map_err(|_| Errno::FAULT)?;
    // Every iovec is checked and counted as written; only what one log line can hold is
    // copied (one byte more, so that the line knows it was cut).
    let keep = cx.state().quotas.max_log_line_bytes.saturating_add(1);
    let mut text = Vec::new();
    let mut n: u64 = 0;
    for iov in table.chunks_exact(8) {
        let ptr = u64::from(u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]));
        let len = u64::from(u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]));
        check_range(cx, ptr, len).map_err(|_| Errno::FAULT)?;
        n += len;
        let room = keep.saturating_sub(text.len()) as u64;
        if room > 0 {
            text.extend(read_bytes(cx, ptr, len.min(room)).map_err(|_| Errno::FAULT)?);
        }
    }
    let n = u32::try_from(n).map_err(|_| Errno::INVAL)?;
    write_u32(cx, nwritten, n).map_err(|_| Errno::FAULT)?;
    if text.is_empty() {
        // Nothing was written: no log line (a lone "\n" still logs an empty line).
        return Ok(Errno::SUCCESS);
    }
    let mut total = n as usize;
    if total == text.len() && text.last() == Some(&b'\n') {
        text.pop();
        total -= 1;
    }
    emit_part(cx.state(), level, &text, total);
    Ok(Errno::SUCCESS)
}

/// `fd_write`: fd 1 logs at INFO, fd 2 at ERROR (one trailing newline stripped); other fds BADF.
pub(super) fn fd_write(
    cx: &mut (impl Guest + ?Sized),
    fd: u64,
    iovs: u64,
    iovs_len: u64,
    nwritten: u64,
) -> HostResult<u32> {
    Ok(write_stdio(cx, fd, iovs, iovs_len, nwritten).unwrap_or_else(|e| e))
}

/// `fd_pwrite`: as `fd_write`; the offset is ignored.
pub(super) fn fd_pwrite(
    cx: &mut (impl Guest + ?Sized),
    fd: u64,
    iovs: u64,
    iovs_len: u64,
    _offset: u64,
    nwritten: u64,
) -> HostResult<u32> {
    fd_write(cx, fd, iovs, iovs_len, nwritten)
}

/// `fd_seek`: stdio cannot seek (SPIPE); other fds BADF.
pub(super) fn fd_seek(_: &mut (impl Guest + ?Sized), fd: u64, _: u64, _: u64, _: u64) -> HostResult<u32> {
    Ok(if is_stdio(fd) { Errno::SPIPE } else { Errno::BADF })
}

/// `fd_tell`: 0 for stdio.
pub(super) fn fd_tell(cx: &mut (impl Guest + ?Sized), fd: u64, out: u64) -> HostResult<u32> {
    if !is_stdio(fd) {
        return Ok(Errno::BADF);
    }
    Ok(write_u64(cx, out, 0).map_or(Errno::FAULT, |()| Errno::SUCCESS))
}

/// `fd_close`: stdio "closes" successfully; other fds BADF.
pub(super) fn fd_close(_: &mut (impl Guest + ?Sized), fd: u64) -> HostResult<u32> {
    stdio_result(fd)
}

/// `fd_fdstat_get`: stdio is a write-only character device.
pub(super) fn fd_fdstat_get(cx: &mut (impl Guest + ?Sized), fd: u64, out: u64) -> HostResult<u32> {
    if !is_stdio(fd) {
        return Ok(Errno::BADF);
    }
    let mut stat = [0u8; 24];
    stat[0] = 2; // CHARACTER_DEVICE
    stat[8..16].copy_from_slice(&64u64.to_le_bytes()); // rights_base = FD_WRITE
    Ok(write_bytes(cx, out, &stat).map_or(Errno::FAULT, |()| Errno::SUCCESS))
}

/// `fd_readdir`: no directories.
pub(super) fn fd_readdir(
    cx: &mut (impl Guest + ?Sized),
    _fd: u64,
    _buf: u64,
    _len: u64,
    _cookie: u64,
    out: u64,
) -> HostResult<u32> {
    let _ = write_u32(cx, out, 0);
    Ok(Errno::BADF)
}

/// `fd_renumber`: no renumbering.
pub(super) fn fd_renumber(_: &mut (impl Guest + ?Sized), _: u64, _: u64) -> HostResult<u32> {
    Ok(Errno::BADF)
}

/// `path_open`: there is no filesystem.
#[allow(clippy::too_many_arguments, reason = "mirrors the WASI signature")]
pub(super) fn path_open(
    cx: &mut (impl Guest + ?Sized),
    _: u64,
    _: u64,
    _: u64,
    _: u64,
    _: u64,
    _: u64,
    _: u64,
    _: u64,
    out: u64,
) -> HostResult<u32> {
    let _ = write_u32(cx, out, 0);
    Ok(Errno::NOENT)
}

/// `path_readlink`: no links.
pub(super) fn path_readlink(
    cx: &mut (impl Guest + ?Sized),
    _: u64,
    _: u64,
    _: u64,
    _: u64,
    _: u64,
    out: u64,
) -> HostResult<u32> {
    let _ = write_u32(cx, out, 0);
    Ok(Errno::NOTSUP)
}

/// `sock_accept`: no sockets.
pub(super) fn sock_accept(cx: &mut (impl Guest + ?Sized), _: u64, _: u64, out: u64) -> HostResult<u32> {
    let _ = write_u32(cx, out, 0);
    Ok(Errno::NOTSUP)
}

/// `sock_recv`: no sockets.
pub(super) fn sock_recv(
    cx: &mut (impl Guest + ?Sized),
    _: u64,
    _: u64,
    _: u64,
    _: u64,
    out_len: u64,
    out_flags: u64,
) -> HostResult<u32> {
    let _ = write_u32(cx, out_len, 0);
    let _ = write_u32(cx, out_flags, 0);
    Ok(Errno::NOTSUP)
}

/// `sock_send`: no sockets.
pub(super) fn sock_send(cx: &mut (impl Guest + ?Sized), _: u64, _: u64, _: u64, _: u64, out: u64) -> HostResult<u32> {
    let _ = write_u32(cx, out, 0);
    Ok(Errno::NOTSUP)
}

fn environ(cx: &mut (impl Guest + ?Sized)) -> Vec<Vec<u8>> {
    cx.state()
        .env
        .environment
        .iter()
        .map(|(k, v)| {
            let mut s = format!("{k}={v}").into_bytes();
            s.push(0);
            s
        })
        .collect()
}

/// `environ_sizes_get`: count and total size of `KEY=VALUE\0` strings.
pub(super) fn environ_sizes_get(cx: &mut (impl Guest + ?Sized), count: u64, size: u64) -> HostResult<u32> {
    let env = environ(cx);
    let total: usize = env.iter().map(Vec::len).sum();
    if write_u32(cx, count, env.len() as u32).is_err() || write_u32(cx, size, total as u32).is_err() {
        return Ok(Errno::FAULT);
    }
    Ok(Errno::SUCCESS)
}

/// `environ_get`: writes the strings into `buf` and their addresses into `ptrs`.
pub(super) fn environ_get(cx: &mut (impl Guest + ?Sized), ptrs: u64, buf: u64) -> HostResult<u32> {
    let env = environ(cx);
    let mut at = buf;
    for (i, s) in env.iter().enumerate() {
        let slot = ptrs + 4 * i as u64;
        if write_bytes(cx, at, s).is_err() || write_u32(cx, slot, at as u32).is_err() {
            return Ok(Errno::FAULT);
        }
        at += s.len() as u64;
    }
    Ok(Errno::SUCCESS)
}

/// `args_sizes_get`: no arguments.
pub(super) fn args_sizes_get(cx: &mut (impl Guest + ?Sized), count: u64, size: u64) -> HostResult<u32> {
    if write_u32(cx, count, 0).is_err() || write_u32(cx, size, 0).is_err() {
        return Ok(Errno::FAULT);
    }
    Ok(Errno::SUCCESS)
}

/// `args_get`: nothing to write.
pub(super) fn args_get(_: &mut (impl Guest + ?Sized), _: u64, _: u64) -> HostResult<u32> {
    Ok(Errno::SUCCESS)
}

/// `clock_time_get`: realtime (0) and monotonic (1) from the clock service; CPU-time clocks
/// are not offered (NOTSUP).
pub(super) fn clock_time_get(cx: &mut (impl Guest + ?Sized), id: u64, _precision: u64, out: u64) -> HostResult<u32> {
    let clock = cx.state().env.services.clock.clone();
    let now = match id {
        0 => clock.realtime_nanos(),
        1 => clock.monotonic_nanos(),
        _ => return Ok(Errno::NOTSUP),
    };
    Ok(write_u64(cx, out, now).map_or(Errno::FAULT, |()| Errno::SUCCESS))
}

/// `clock_res_get`: 1 ns for realtime and monotonic.
pub(super) fn clock_res_get(cx: &mut (impl Guest + ?Sized), id: u64, out: u64) -> HostResult<u32> {
    if id > 1 {
        return Ok(Errno::NOTSUP);
    }
    Ok(write_u64(cx, out, 1).map_or(Errno::FAULT, |()| Errno::SUCCESS))
}

/// `random_get`: real randomness; more than 64 KiB at once is INVAL.
pub(super) fn random_get(cx: &mut (impl Guest + ?Sized), buf: u64, len: u64) -> HostResult<u32> {
    if len > MAX_RANDOM {
        return Ok(Errno::INVAL);
    }
    if check_range(cx, buf, len).is_err() {
        return Ok(Errno::FAULT);
    }
    let mut bytes = vec![0u8; len as usize];
    if getrandom::fill(&mut bytes).is_err() {
        return Ok(Errno::NOSYS);
    }
    Ok(write_bytes(cx, buf, &bytes).map_or(Errno::FAULT, |()| Errno::SUCCESS))
}

/// `sched_yield`: nothing to yield to.
pub(super) fn sched_yield(_: &mut (impl Guest + ?Sized)) -> HostResult<u32> {
    Ok(Errno::SUCCESS)
}

/// Most subscriptions one `poll_oneoff` may pass; more is EINVAL.
const MAX_SUBSCRIPTIONS: u64 = 1024;

/// `poll_oneoff(in, out, nsubscriptions, nevents*)`. A filter must not block a proxy's worker,
/// so nothing waits: the soonest clock subscription fires at once, after the clock service has
/// been told of the wait ([`Clock::idle`](crate::services::Clock::idle): a manual clock moves
/// forward by it, so a guest that sleeps sees its time pass in scenarios; the system clock does
/// not move, and a guest that checks the time waits in a loop, under its deadline, as in
/// Envoy). Every clock subscription due by then gets an event; fd subscriptions get `BADF`
/// events (a filter has no files). Malformed subscriptions are EINVAL.
pub(super) fn poll_oneoff(
    cx: &mut (impl Guest + ?Sized),
    input: u64,
    output: u64,
    n: u64,
    out: u64,
) -> HostResult<u32> {
    if n == 0 || n > MAX_SUBSCRIPTIONS {
        return Ok(Errno::INVAL);
    }
    let Ok(subs) = read_bytes(cx, input, n * SUBSCRIPTION) else { return Ok(Errno::FAULT) };
    if check_range(cx, output, n * EVENT).is_err() {
        return Ok(Errno::FAULT);
    }
    let clock = cx.state().env.services.clock.clone();
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or_default());
    // Each clock subscription's wait from now, in nanoseconds.
    let mut waits = Vec::with_capacity(n as usize);
    for s in subs.chunks_exact(SUBSCRIPTION as usize) {
        let wait = match s[8] {
            0 => {
                let now = match u32::from_le_bytes([s[16], s[17], s[18], s[19]]) {
                    0 => clock.realtime_nanos(),
                    1..=3 => clock.monotonic_nanos(),
                    _ => return Ok(Errno::INVAL),
                };
                let timeout = word(s, 24);
                let absolute = s[40] & 1 != 0;
                Some(if absolute { timeout.saturating_sub(now) } else { timeout })
            }
            1 | 2 => None,
            _ => return Ok(Errno::INVAL),
        };
        waits.push(wait);
    }
    let soonest = waits.iter().flatten().min().copied();
    if let Some(wait) = soonest {
        clock.idle(std::time::Duration::from_nanos(wait));
    }
    let mut events = Vec::new();
    for (s, wait) in subs.chunks_exact(SUBSCRIPTION as usize).zip(&waits) {
        let (error, kind) = match wait {
            Some(w) if soonest.is_some_and(|m| *w <= m) => (Errno::SUCCESS, 0u8),
            Some(_) => continue,
            None => (Errno::BADF, s[8]),
        };
        let mut e = [0u8; EVENT as usize];
        e[..8].copy_from_slice(&s[..8]);
        e[8..10].copy_from_slice(&(error as u16).to_le_bytes());
        e[10] = kind;
        events.extend_from_slice(&e);
    }
    let count = (events.len() as u64) / EVENT;
    if write_bytes(cx, output, &events).is_err() {
        return Ok(Errno::FAULT);
    }
    Ok(write_u32(cx, out, count as u32).map_or(Errno::FAULT, |()| Errno::SUCCESS))
}

/// Bytes of one WASI subscription and of one event.
const SUBSCRIPTION: u64 = 48;
const EVENT: u64 = 32;

/// `proc_exit`: logged as an error; the call returns (the guest traps right after, on its own
/// `unreachable`).
pub(super) fn proc_exit(cx: &mut (impl Guest + ?Sized), code: u64) -> HostResult<()> {
    emit(cx.state(), LogLevel::Error, format!("proc_exit({})", code as u32 as i32).as_bytes());
    Ok(())
}

/// `env.emscripten_notify_memory_growth`: nothing to do.
pub(super) fn notify_memory_growth(_: &mut (impl Guest + ?Sized), _: u64) -> HostResult<()> {
    Ok(())
}

/// `env.pthread_equal(a, b)`.
pub(super) fn pthread_equal(_: &mut (impl Guest + ?Sized), a: u64, b: u64) -> HostResult<u32> {
    Ok(u32::from(a == b))
}

macro_rules! fixed {
    ($($name:ident($($a:ident),*) => $v:expr;)*) => {$(
        #[doc = concat!("A stub answering `", stringify!($v), "`.")]
        #[allow(clippy::too_many_arguments, reason = "mirrors WASI signatures")]
        pub(super) fn $name(_: &mut (impl Guest + ?Sized), $($a: u64),*) -> HostResult<u32> {
            $(let _ = $a;)*
            $v
        }
    )*};
}

fixed! {
    nosys2(a, b) => Ok(Errno::NOSYS);
    nosys3(a, b, c) => Ok(Errno::NOSYS);
    nosys4(a, b, c, d) => Ok(Errno::NOSYS);
    nosys5(a, b, c, d, e) => Ok(Errno::NOSYS);
    badf2(a, b) => Ok(Errno::BADF);
    success4(a, b, c, d) => Ok(Errno::SUCCESS);
    stdio_only1(fd) => stdio_result(fd);
    stdio_only2(fd, b) => stdio_result(fd);
    stdio_only3(fd, b, c) => stdio_result(fd);
    stdio_only4(fd, b, c, d) => stdio_result(fd);
    notsup2(a, b) => Ok(Errno::NOTSUP);
    notsup3(a, b, c) => Ok(Errno::NOTSUP);
    notsup5(a, b, c, d, e) => Ok(Errno::NOTSUP);
    notsup6(a, b, c, d, e, f) => Ok(Errno::NOTSUP);
    notsup7(a, b, c, d, e, f, g) => Ok(Errno::NOTSUP);
}
