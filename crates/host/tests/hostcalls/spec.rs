//! Host-function signatures written from the ABI reference (sections 4 and 9), independent
//! of the library's table, and a check that the two agree.

use wasmux::AbiVersion;
use wasmux::abi::{HOST_FUNCS, ValType, proxy_funcs};

/// Which ABI versions provide a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vers {
    All,
    V010,
    V02x,
    V021,
}

impl Vers {
    pub(crate) fn contains(self, v: AbiVersion) -> bool {
        match self {
            Self::All => true,
            Self::V010 => v == AbiVersion::V0_1_0,
            Self::V02x => v != AbiVersion::V0_1_0,
            Self::V021 => v == AbiVersion::V0_2_1,
        }
    }
}

const E: &str = "env";
const W: &str = "wasi_snapshot_preview1";
use Vers::{All, V02x, V010, V021};

/// (import module, name, params (`i` = i32, `I` = i64), returns i32, versions).
pub(crate) const SIGS: &[(&str, &str, &str, bool, Vers)] = &[
    // 4.1 logging, time, timers, contexts
    (E, "proxy_log", "iii", true, All),
    (E, "proxy_get_log_level", "i", true, V021),
    (E, "proxy_get_current_time_nanoseconds", "i", true, All),
    (E, "proxy_set_tick_period_milliseconds", "i", true, All),
    (E, "proxy_set_effective_context", "i", true, All),
    (E, "proxy_done", "", true, All),
    (E, "proxy_get_configuration", "ii", true, V010),
    // 4.2 buffers
    (E, "proxy_get_buffer_bytes", "iiiii", true, All),
    (E, "proxy_set_buffer_bytes", "iiiii", true, All),
    (E, "proxy_get_buffer_status", "iii", true, All),
    // 4.3 maps
    (E, "proxy_get_header_map_pairs", "iii", true, All),
    (E, "proxy_set_header_map_pairs", "iii", true, All),
    (E, "proxy_get_header_map_size", "ii", true, All),
    (E, "proxy_get_header_map_value", "iiiii", true, All),
    (E, "proxy_add_header_map_value", "iiiii", true, All),
    (E, "proxy_replace_header_map_value", "iiiii", true, All),
    (E, "proxy_remove_header_map_value", "iii", true, All),
    // 4.4 stream control
    (E, "proxy_continue_stream", "i", true, V02x),
    (E, "proxy_close_stream", "i", true, V02x),
    (E, "proxy_continue_request", "", true, V010),
    (E, "proxy_continue_response", "", true, V010),
    (E, "proxy_clear_route_cache", "", true, V010),
    (E, "proxy_send_local_response", "iiiiiiii", true, All),
    (E, "proxy_get_status", "iii", true, All),
    // 4.5 callouts
    (E, "proxy_http_call", "iiiiiiiiii", true, All),
    (E, "proxy_grpc_call", "iiiiiiiiiiii", true, All),
    (E, "proxy_grpc_stream", "iiiiiiiii", true, All),
    (E, "proxy_grpc_send", "iiii", true, All),
    (E, "proxy_grpc_cancel", "i", true, All),
    (E, "proxy_grpc_close", "i", true, All),
    // 4.6 shared data and queues
    (E, "proxy_get_shared_data", "iiiii", true, All),
    (E, "proxy_set_shared_data", "iiiii", true, All),
    (E, "proxy_register_shared_queue", "iii", true, All),
    (E, "proxy_resolve_shared_queue", "iiiii", true, All),
    (E, "proxy_enqueue_shared_queue", "iii", true, All),
    (E, "proxy_dequeue_shared_queue", "iii", true, All),
    // 4.7 metrics
    (E, "proxy_define_metric", "iiii", true, All),
    (E, "proxy_increment_metric", "iI", true, All),
    (E, "proxy_record_metric", "iI", true, All),
    (E, "proxy_get_metric", "ii", true, All),
    // 4.8 properties, 4.9 foreign functions
    (E, "proxy_get_property", "iiii", true, All),
    (E, "proxy_set_property", "iiii", true, All),
    (E, "proxy_call_foreign_function", "iiiiii", true, All),
    // 9: Emscripten leftovers
    (E, "emscripten_notify_memory_growth", "i", false, All),
    (E, "pthread_equal", "ii", true, All),
    // 9: WASI preview1
    (W, "fd_write", "iiii", true, All),
    (W, "fd_pwrite", "iiiIi", true, All),
    (W, "fd_read", "iiii", true, All),
    (W, "fd_pread", "iiiIi", true, All),
    (W, "fd_seek", "iIii", true, All),
    (W, "fd_tell", "ii", true, All),
    (W, "fd_close", "i", true, All),
    (W, "fd_fdstat_get", "ii", true, All),
    (W, "fd_fdstat_set_flags", "ii", true, All),
    (W, "fd_fdstat_set_rights", "iII", true, All),
    (W, "fd_advise", "iIIi", true, All),
    (W, "fd_allocate", "iII", true, All),
    (W, "fd_datasync", "i", true, All),
    (W, "fd_sync", "i", true, All),
    (W, "fd_filestat_get", "ii", true, All),
    (W, "fd_filestat_set_size", "iI", true, All),
    (W, "fd_filestat_set_times", "iIIi", true, All),
    (W, "fd_readdir", "iiiIi", true, All),
    (W, "fd_renumber", "ii", true, All),
    (W, "fd_prestat_get", "ii", true, All),
    (W, "fd_prestat_dir_name", "iii", true, All),
    (W, "path_open", "iiiiiIIii", true, All),
    (W, "path_filestat_get", "iiiii", true, All),
    (W, "path_filestat_set_times", "iiiiIIi", true, All),
    (W, "path_create_directory", "iii", true, All),
    (W, "path_remove_directory", "iii", true, All),
    (W, "path_unlink_file", "iii", true, All),
    (W, "path_readlink", "iiiiii", true, All),
    (W, "path_rename", "iiiiii", true, All),
    (W, "path_link", "iiiiiii", true, All),
    (W, "path_symlink", "iiiii", true, All),
    (W, "sock_accept", "iii", true, All),
    (W, "sock_recv", "iiiiii", true, All),
    (W, "sock_send", "iiiii", true, All),
    (W, "sock_shutdown", "ii", true, All),
    (W, "environ_sizes_get", "ii", true, All),
    (W, "environ_get", "ii", true, All),
    (W, "args_sizes_get", "ii", true, All),
    (W, "args_get", "ii", true, All),
    (W, "clock_time_get", "iIi", true, All),
    (W, "clock_res_get", "ii", true, All),
    (W, "random_get", "ii", true, All),
    (W, "sched_yield", "", true, All),
    (W, "poll_oneoff", "iiii", true, All),
    (W, "proc_exit", "i", false, All),
];

/// The WAT type use for a signature, e.g. `(param i32 i64) (result i32)`.
pub(crate) fn wat_type(params: &str, result: bool) -> String {
    let mut s = String::new();
    if !params.is_empty() {
        s.push_str("(param");
        for c in params.chars() {
            s.push_str(if c == 'I' { " i64" } else { " i32" });
        }
        s.push(')');
    }
    if result {
        s.push_str(" (result i32)");
    }
    s
}

pub(crate) fn sig(name: &str) -> &'static (&'static str, &'static str, &'static str, bool, Vers) {
    SIGS.iter().find(|s| s.1 == name).unwrap_or_else(|| panic!("no signature for {name}"))
}

fn val_types(params: &str) -> Vec<ValType> {
    params.chars().map(|c| if c == 'I' { ValType::I64 } else { ValType::I32 }).collect()
}

/// The library's host-function table matches the reference: names, import modules,
/// signatures, version gating and the per-version counts (40 / 38 / 39).
pub(crate) fn host_table_matches_the_reference() {
    assert_eq!(HOST_FUNCS.len(), SIGS.len(), "same number of host functions");
    for (module, name, params, result, vers) in SIGS {
        let f = HOST_FUNCS.iter().find(|f| f.name == *name).unwrap_or_else(|| panic!("library lacks {name}"));
        assert!(f.module_names().contains(module), "{name}: module {:?}", f.module_names());
        assert_eq!(f.params, val_types(params).as_slice(), "{name}: params");
        let want_results: &[ValType] = if *result { &[ValType::I32] } else { &[] };
        assert_eq!(f.results, want_results, "{name}: results");
        for v in AbiVersion::ALL {
            assert_eq!(f.versions.contains(v), vers.contains(v), "{name} in {v}");
        }
        assert_eq!(f.is_proxy(), name.starts_with("proxy_"));
        if *module == W {
            assert_eq!(f.module_names(), ["wasi_snapshot_preview1", "wasi_unstable"], "{name}");
        }
    }
    let count = |v| proxy_funcs(v).count();
    assert_eq!(count(AbiVersion::V0_1_0), 40);
    assert_eq!(count(AbiVersion::V0_2_0), 38);
    assert_eq!(count(AbiVersion::V0_2_1), 39);
    for v in AbiVersion::ALL {
        let mine = SIGS.iter().filter(|s| s.1.starts_with("proxy_") && s.4.contains(v)).count();
        assert_eq!(mine, count(v), "{v}");
    }
}
