//! Every host function the guest can import, described once as data.
//!
//! [`HOST_FUNCS`] is generated from one list that gives each function's import module, name,
//! parameter and result types, the ABI versions that include it, and its implementation. The
//! signatures, the version gating, the load-time import check and every backend's registration
//! loop all read this one table, so they cannot drift apart.
//!
//! Each implementation is a plain function over a [`Guest`]: bounds-check guest pointers, call
//! into the host state or an embedder service, copy results back. Files follow the spec
//! sections (logging, clocks and timers, buffers, HTTP fields, stream control, HTTP and gRPC
//! callouts, shared key-value store, shared queues, metrics, properties, foreign functions),
//! plus WASI preview1.

use crate::guest::Fail;
use crate::state::Restriction;
use crate::vm::{FuncType, Guest, ValType};
use crate::{AbiSet, AbiVersion, HostState, Result, Status};

mod buffers;
mod callouts;
mod context;
mod ffi;
mod logging;
pub(crate) use logging::log_dropped_lines;
mod maps;
mod metrics;
mod properties;
mod shared;
mod stream;
mod time;
mod wasi;

/// Import modules a host function can be registered under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImportModule {
    /// `env`: every `proxy_*` function and two Emscripten helpers.
    Env,
    /// WASI preview1, registered under both `wasi_snapshot_preview1` and `wasi_unstable`.
    Wasi,
}

impl ImportModule {
    /// The module names a backend registers the function under.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Self::Env => &["env"],
            Self::Wasi => &["wasi_snapshot_preview1", "wasi_unstable"],
        }
    }
}

type Impl = fn(&mut dyn Guest, &[u64]) -> Result<u64>;

/// One host function: its import name, type, ABI versions and implementation.
pub struct HostFunc {
    /// Import module.
    pub module: ImportModule,
    /// Import name, verbatim from the spec, e.g. `proxy_get_header_map_value`.
    pub name: &'static str,
    /// Parameter types.
    pub params: &'static [ValType],
    /// Result types (empty or one `i32`).
    pub results: &'static [ValType],
    /// ABI versions that include it (WASI functions: every version).
    pub versions: AbiSet,
    imp: Impl,
}

impl std::fmt::Debug for HostFunc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.module.names()[0], self.name)
    }
}

impl HostFunc {
    /// The module names a backend registers this function under.
    pub fn module_names(&self) -> &'static [&'static str] {
        self.module.names()
    }

    /// The function's type.
    pub fn ty(&self) -> FuncType {
        FuncType::new(self.params, self.results)
    }

    /// Index of this function in [`HOST_FUNCS`].
    pub fn index(&self) -> usize {
        let base = HOST_FUNCS.as_ptr() as usize;
        (self as *const Self as usize - base) / size_of::<Self>()
    }

    /// Whether this is a `proxy_*` function of the ABI proper (not WASI or a helper).
    pub fn is_proxy(&self) -> bool {
        self.name.starts_with("proxy_")
    }

    /// Runs the function for a guest call. `args` holds one raw word per parameter; the result
    /// is the raw `i32` result (ignored by backends when the type has no result).
    ///
    /// # Errors
    /// Only for traps: a re-entrant guest call (the allocator) that trapped. Bad guest input is
    /// answered with a status, never an error.
    pub fn invoke(&self, cx: &mut dyn Guest, args: &[u64]) -> Result<u64> {
        (self.imp)(cx, args)
    }
}

/// What every host function does around its implementation: coverage, and the strace lines
/// (target `wasmux::strace`, level TRACE).
#[inline(always)]
fn around<G: Guest + ?Sized>(
    index: Index,
    cx: &mut G,
    args: &[u64],
    imp: impl FnOnce(&mut G) -> Result<u64>,
) -> Result<u64> {
    cover(index, cx)?;
    if !tracing::enabled!(target: "wasmux::strace", tracing::Level::TRACE) {
        return imp(cx);
    }
    let name = HOST_FUNCS[index as usize].name;
    tracing::trace!(target: "wasmux::strace", "[vm->host] {name}({args:?})");
    let ret = imp(cx);
    tracing::trace!(target: "wasmux::strace", "[vm<-host] {name} return: {:?}", ret.as_ref().ok());
    ret
}

/// Records that the guest called function `index` ([`HostState::coverage`]), and refuses the
/// call when the host is running guest code under a restriction that does not allow it.
#[inline(always)]
fn cover<G: Guest + ?Sized>(index: Index, cx: &mut G) -> Result<()> {
    let state = cx.state();
    state.coverage |= 1u128 << index as usize;
    if state.restriction != Restriction::None {
        return restricted(state, index as usize);
    }
    Ok(())
}

/// Host functions the guest may call from its allocator when a host function calls it:
/// proxy-wasm-cpp-host's list (logging, and what language runtimes need to allocate).
const ALLOCATOR_ALLOWED: &[&str] = &["proxy_log", "fd_write", "clock_time_get", "poll_oneoff"];

/// WASI functions the guest may call from its start-up exports (besides `proxy_log` and
/// `emscripten_notify_memory_growth`): proxy-wasm-cpp-host's list, which is every WASI
/// function but `fd_read`, `fd_seek`, `fd_close`, `path_open`, `sched_yield` and
/// `proc_exit`.
const START_UP_REFUSED_WASI: &[&str] = &["fd_read", "fd_seek", "fd_close", "path_open", "sched_yield", "proc_exit"];

/// Whether the guest may call `HOST_FUNCS[index]` under `restriction`.
pub(crate) fn allowed(restriction: Restriction, index: usize) -> bool {
    let Some(f) = HOST_FUNCS.get(index) else { return false };
    match restriction {
        Restriction::None => true,
        Restriction::Allocator => ALLOCATOR_ALLOWED.contains(&f.name),
        Restriction::StartUp => match f.module {
            ImportModule::Wasi => !START_UP_REFUSED_WASI.contains(&f.name),
            ImportModule::Env => matches!(f.name, "proxy_log" | "emscripten_notify_memory_growth"),
        },
    }
}

/// The check of [`cover`] under a restriction, out of line.
#[cold]
fn restricted(state: &HostState, index: usize) -> Result<()> {
    if allowed(state.restriction, index) {
        return Ok(());
    }
    let name = HOST_FUNCS.get(index).map_or("?", |f| f.name);
    let during = match state.restriction {
        Restriction::Allocator => "inside the guest allocator",
        _ => "during start-up (_initialize, main, _start)",
    };
    Err(crate::Error::new_trap(
        state.engine,
        crate::TrapKind::Restricted,
        format!("host function `{name}` may not be called {during}"),
    ))
}

/// Lowers a host function's typed return value into a raw word.
pub(crate) trait IntoRaw {
    fn into_raw(self) -> u64;
}
impl IntoRaw for Status {
    fn into_raw(self) -> u64 {
        self as u64
    }
}
impl IntoRaw for u32 {
    fn into_raw(self) -> u64 {
        u64::from(self)
    }
}
impl IntoRaw for () {
    fn into_raw(self) -> u64 {
        0
    }
}

macro_rules! ty {
    (I32) => {
        ValType::I32
    };
    (I64) => {
        ValType::I64
    };
}

macro_rules! host_funcs {
    ($( $module:ident $name:ident ( $($arg:ident : $t:ident),* ) $(-> $r:ident)? , $ver:ident => $imp:path ;)*) => {
        /// Every host function, `proxy_*` and WASI, in one table.
        pub static HOST_FUNCS: &[HostFunc] = &[$(
            HostFunc {
                module: ImportModule::$module,
                name: stringify!($name),
                params: &[$(ty!($t)),*],
                results: &[$(ty!($r))?],
                versions: AbiSet::$ver,
                imp: |cx, args| {
                    #[allow(unused_variables, reason = "zero-argument functions ignore args")]
                    let &[$($arg),*] = args else {
                        // Counted as called, like any call that reaches the host.
                        cover(Index::$name, cx)?;
                        return Ok(Status::BadArgument as u64);
                    };
                    direct::$name::<dyn Guest>(cx, $($arg),*)
                },
            },
        )*];

        /// Position of each function in [`HOST_FUNCS`].
        #[allow(non_camel_case_types, reason = "variants are named after the functions")]
        #[derive(Clone, Copy)]
        enum Index { $($name),* }

        /// Every host function as a typed Rust function of raw words, for backends that bind
        /// each import to its own native symbol (the null engine): the same implementation,
        /// coverage and tracing as [`HostFunc::invoke`], without the argument slice, and
        /// compiled for the backend's own [`Guest`] type (no dynamic calls inside).
        pub mod direct {
            #[allow(clippy::wildcard_imports, reason = "the implementations of the parent module")]
            use super::*;
            $(
                #[doc = concat!("`", stringify!($name), "`.")]
                ///
                /// # Errors
                /// As [`HostFunc::invoke`].
                #[allow(clippy::too_many_arguments, reason = "one parameter per ABI parameter")]
                pub fn $name<G: Guest + ?Sized>(cx: &mut G, $($arg: u64),*) -> Result<u64> {
                    around(Index::$name, cx, &[$($arg),*], |cx| match $imp(cx, $($arg),*) {
                        Ok(v) => Ok(IntoRaw::into_raw(v)),
                        Err(Fail::Raw(raw)) => Ok(u64::from(raw)),
                        Err(Fail::Trap(e)) => Err(e),
                    })
                }
            )*
        }
    };
}

host_funcs! {
    // Logging.
    Env proxy_log(level: I32, msg: I32, len: I32) -> I32, ALL => logging::log;
    Env proxy_get_log_level(out: I32) -> I32, V021 => logging::get_log_level;
    // Clocks and timers.
    Env proxy_get_current_time_nanoseconds(out: I32) -> I32, ALL => time::get_current_time;
    Env proxy_set_tick_period_milliseconds(period: I32) -> I32, ALL => time::set_tick_period;
    // Contexts.
    Env proxy_set_effective_context(id: I32) -> I32, ALL => context::set_effective_context;
    Env proxy_done() -> I32, ALL => context::done;
    // Configuration and buffers.
    Env proxy_get_configuration(out_ptr: I32, out_len: I32) -> I32, V010 => buffers::get_configuration;
    Env proxy_get_buffer_bytes(ty: I32, start: I32, max: I32, out_ptr: I32, out_len: I32) -> I32, ALL => buffers::get_buffer_bytes;
    Env proxy_set_buffer_bytes(ty: I32, start: I32, size: I32, ptr: I32, len: I32) -> I32, ALL => buffers::set_buffer_bytes;
    Env proxy_get_buffer_status(ty: I32, out_len: I32, out_flags: I32) -> I32, ALL => buffers::get_buffer_status;
    // HTTP fields.
    Env proxy_get_header_map_pairs(ty: I32, out_ptr: I32, out_len: I32) -> I32, ALL => maps::get_pairs;
    Env proxy_set_header_map_pairs(ty: I32, ptr: I32, len: I32) -> I32, ALL => maps::set_pairs;
    Env proxy_get_header_map_size(ty: I32, out: I32) -> I32, ALL => maps::get_size;
    Env proxy_get_header_map_value(ty: I32, key: I32, key_len: I32, out_ptr: I32, out_len: I32) -> I32, ALL => maps::get_value;
    Env proxy_add_header_map_value(ty: I32, key: I32, key_len: I32, val: I32, val_len: I32) -> I32, ALL => maps::add_value;
    Env proxy_replace_header_map_value(ty: I32, key: I32, key_len: I32, val: I32, val_len: I32) -> I32, ALL => maps::replace_value;
    Env proxy_remove_header_map_value(ty: I32, key: I32, key_len: I32) -> I32, ALL => maps::remove_value;
    // Stream control.
    Env proxy_continue_stream(ty: I32) -> I32, V02X => stream::continue_stream;
    Env proxy_close_stream(ty: I32) -> I32, V02X => stream::close_stream;
    Env proxy_continue_request() -> I32, V010 => stream::continue_request;
    Env proxy_continue_response() -> I32, V010 => stream::continue_response;
    Env proxy_clear_route_cache() -> I32, V010 => stream::clear_route_cache;
    Env proxy_send_local_response(code: I32, details: I32, details_len: I32, body: I32, body_len: I32, headers: I32, headers_len: I32, grpc: I32) -> I32, ALL => stream::send_local_response;
    Env proxy_get_status(out_code: I32, out_ptr: I32, out_len: I32) -> I32, ALL => callouts::get_status;
    // HTTP and gRPC callouts.
    Env proxy_http_call(up: I32, up_len: I32, hdr: I32, hdr_len: I32, body: I32, body_len: I32, trl: I32, trl_len: I32, timeout: I32, out: I32) -> I32, ALL => callouts::http_call;
    Env proxy_grpc_call(up: I32, up_len: I32, svc: I32, svc_len: I32, method: I32, method_len: I32, md: I32, md_len: I32, msg: I32, msg_len: I32, timeout: I32, out: I32) -> I32, ALL => callouts::grpc_call;
    Env proxy_grpc_stream(up: I32, up_len: I32, svc: I32, svc_len: I32, method: I32, method_len: I32, md: I32, md_len: I32, out: I32) -> I32, ALL => callouts::grpc_stream;
    Env proxy_grpc_send(token: I32, msg: I32, msg_len: I32, end: I32) -> I32, ALL => callouts::grpc_send;
    Env proxy_grpc_cancel(token: I32) -> I32, ALL => callouts::grpc_cancel;
    Env proxy_grpc_close(token: I32) -> I32, ALL => callouts::grpc_close;
    // Shared key-value store.
    Env proxy_get_shared_data(key: I32, key_len: I32, out_ptr: I32, out_len: I32, out_cas: I32) -> I32, ALL => shared::get_shared_data;
    Env proxy_set_shared_data(key: I32, key_len: I32, val: I32, val_len: I32, cas: I32) -> I32, ALL => shared::set_shared_data;
    // Shared queues.
    Env proxy_register_shared_queue(name: I32, name_len: I32, out: I32) -> I32, ALL => shared::register_queue;
    Env proxy_resolve_shared_queue(vm: I32, vm_len: I32, name: I32, name_len: I32, out: I32) -> I32, ALL => shared::resolve_queue;
    Env proxy_enqueue_shared_queue(id: I32, val: I32, val_len: I32) -> I32, ALL => shared::enqueue;
    Env proxy_dequeue_shared_queue(id: I32, out_ptr: I32, out_len: I32) -> I32, ALL => shared::dequeue;
    // Metrics.
    Env proxy_define_metric(ty: I32, name: I32, name_len: I32, out: I32) -> I32, ALL => metrics::define;
    Env proxy_increment_metric(id: I32, delta: I64) -> I32, ALL => metrics::increment;
    Env proxy_record_metric(id: I32, value: I64) -> I32, ALL => metrics::record;
    Env proxy_get_metric(id: I32, out: I32) -> I32, ALL => metrics::get;
    // Properties.
    Env proxy_get_property(path: I32, path_len: I32, out_ptr: I32, out_len: I32) -> I32, ALL => properties::get_property;
    Env proxy_set_property(path: I32, path_len: I32, val: I32, val_len: I32) -> I32, ALL => properties::set_property;
    // Foreign functions.
    Env proxy_call_foreign_function(name: I32, name_len: I32, args: I32, args_len: I32, out_ptr: I32, out_len: I32) -> I32, ALL => ffi::call_foreign_function;
    // Emscripten leftovers some toolchains import.
    Env emscripten_notify_memory_growth(idx: I32), ALL => wasi::notify_memory_growth;
    Env pthread_equal(a: I32, b: I32) -> I32, ALL => wasi::pthread_equal;
    // WASI preview1.
    Wasi fd_write(fd: I32, iovs: I32, iovs_len: I32, nwritten: I32) -> I32, ALL => wasi::fd_write;
    Wasi fd_pwrite(fd: I32, iovs: I32, iovs_len: I32, offset: I64, nwritten: I32) -> I32, ALL => wasi::fd_pwrite;
    Wasi fd_read(fd: I32, iovs: I32, iovs_len: I32, nread: I32) -> I32, ALL => wasi::nosys4;
    Wasi fd_pread(fd: I32, iovs: I32, iovs_len: I32, offset: I64, nread: I32) -> I32, ALL => wasi::nosys5;
    Wasi fd_seek(fd: I32, offset: I64, whence: I32, out: I32) -> I32, ALL => wasi::fd_seek;
    Wasi fd_tell(fd: I32, out: I32) -> I32, ALL => wasi::fd_tell;
    Wasi fd_close(fd: I32) -> I32, ALL => wasi::fd_close;
    Wasi fd_fdstat_get(fd: I32, out: I32) -> I32, ALL => wasi::fd_fdstat_get;
    Wasi fd_fdstat_set_flags(fd: I32, flags: I32) -> I32, ALL => wasi::nosys2;
    Wasi fd_fdstat_set_rights(fd: I32, base: I64, inheriting: I64) -> I32, ALL => wasi::stdio_only3;
    Wasi fd_advise(fd: I32, offset: I64, len: I64, advice: I32) -> I32, ALL => wasi::success4;
    Wasi fd_allocate(fd: I32, offset: I64, len: I64) -> I32, ALL => wasi::stdio_only3;
    Wasi fd_datasync(fd: I32) -> I32, ALL => wasi::stdio_only1;
    Wasi fd_sync(fd: I32) -> I32, ALL => wasi::stdio_only1;
    Wasi fd_filestat_get(fd: I32, out: I32) -> I32, ALL => wasi::badf2;
    Wasi fd_filestat_set_size(fd: I32, size: I64) -> I32, ALL => wasi::stdio_only2;
    Wasi fd_filestat_set_times(fd: I32, atim: I64, mtim: I64, flags: I32) -> I32, ALL => wasi::stdio_only4;
    Wasi fd_readdir(fd: I32, buf: I32, len: I32, cookie: I64, out: I32) -> I32, ALL => wasi::fd_readdir;
    Wasi fd_renumber(fd: I32, to: I32) -> I32, ALL => wasi::fd_renumber;
    Wasi fd_prestat_get(fd: I32, out: I32) -> I32, ALL => wasi::badf2;
    Wasi fd_prestat_dir_name(fd: I32, path: I32, len: I32) -> I32, ALL => wasi::nosys3;
    Wasi path_open(fd: I32, dirflags: I32, path: I32, path_len: I32, oflags: I32, base: I64, inheriting: I64, fdflags: I32, out: I32) -> I32, ALL => wasi::path_open;
    Wasi path_filestat_get(fd: I32, flags: I32, path: I32, len: I32, out: I32) -> I32, ALL => wasi::notsup5;
    Wasi path_filestat_set_times(fd: I32, flags: I32, path: I32, len: I32, atim: I64, mtim: I64, fst: I32) -> I32, ALL => wasi::notsup7;
    Wasi path_create_directory(fd: I32, path: I32, len: I32) -> I32, ALL => wasi::notsup3;
    Wasi path_remove_directory(fd: I32, path: I32, len: I32) -> I32, ALL => wasi::notsup3;
    Wasi path_unlink_file(fd: I32, path: I32, len: I32) -> I32, ALL => wasi::notsup3;
    Wasi path_readlink(fd: I32, path: I32, len: I32, buf: I32, buf_len: I32, out: I32) -> I32, ALL => wasi::path_readlink;
    Wasi path_rename(fd: I32, old: I32, old_len: I32, new_fd: I32, new: I32, new_len: I32) -> I32, ALL => wasi::notsup6;
    Wasi path_link(fd: I32, flags: I32, old: I32, old_len: I32, new_fd: I32, new: I32, new_len: I32) -> I32, ALL => wasi::notsup7;
    Wasi path_symlink(old: I32, old_len: I32, fd: I32, new: I32, new_len: I32) -> I32, ALL => wasi::notsup5;
    Wasi sock_accept(fd: I32, flags: I32, out: I32) -> I32, ALL => wasi::sock_accept;
    Wasi sock_recv(fd: I32, ri: I32, ri_len: I32, flags: I32, out_len: I32, out_flags: I32) -> I32, ALL => wasi::sock_recv;
    Wasi sock_send(fd: I32, si: I32, si_len: I32, flags: I32, out: I32) -> I32, ALL => wasi::sock_send;
    Wasi sock_shutdown(fd: I32, how: I32) -> I32, ALL => wasi::notsup2;
    Wasi environ_sizes_get(count: I32, size: I32) -> I32, ALL => wasi::environ_sizes_get;
    Wasi environ_get(ptrs: I32, buf: I32) -> I32, ALL => wasi::environ_get;
    Wasi args_sizes_get(count: I32, size: I32) -> I32, ALL => wasi::args_sizes_get;
    Wasi args_get(ptrs: I32, buf: I32) -> I32, ALL => wasi::args_get;
    Wasi clock_time_get(id: I32, precision: I64, out: I32) -> I32, ALL => wasi::clock_time_get;
    Wasi clock_res_get(id: I32, out: I32) -> I32, ALL => wasi::clock_res_get;
    Wasi random_get(buf: I32, len: I32) -> I32, ALL => wasi::random_get;
    Wasi sched_yield() -> I32, ALL => wasi::sched_yield;
    Wasi poll_oneoff(input: I32, output: I32, n: I32, out: I32) -> I32, ALL => wasi::poll_oneoff;
    Wasi proc_exit(code: I32), ALL => wasi::proc_exit;
}

/// Looks up a host function by import module and name.
pub fn find_host_func(module: &str, name: &str) -> Option<&'static HostFunc> {
    HOST_FUNCS.iter().find(|f| f.name == name && f.module.names().contains(&module))
}

/// The `proxy_*` host functions of one ABI version.
pub fn proxy_funcs(version: AbiVersion) -> impl Iterator<Item = &'static HostFunc> {
    HOST_FUNCS.iter().filter(move |f| f.is_proxy() && f.versions.contains(version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_the_spec() {
        assert_eq!(proxy_funcs(AbiVersion::V0_1_0).count(), 40);
        assert_eq!(proxy_funcs(AbiVersion::V0_2_0).count(), 38);
        assert_eq!(proxy_funcs(AbiVersion::V0_2_1).count(), 39);
    }

    #[test]
    fn table_fits_the_coverage_bitset_and_names_are_unique() {
        assert!(HOST_FUNCS.len() <= 128);
        for (i, f) in HOST_FUNCS.iter().enumerate() {
            assert_eq!(f.index(), i);
            assert!(f.params.len() <= 12, "{f:?}");
            assert_eq!(HOST_FUNCS.iter().filter(|g| g.name == f.name).count(), 1, "{f:?}");
        }
    }
}
