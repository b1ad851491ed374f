//! Every host function of every ABI version (0.1.0, 0.2.0, 0.2.1), plus the WASI functions and
//! the Emscripten helpers, exercised through the public `wasmux` API on wasmtime with small
//! hand-written WAT modules.
//!
//! Each case is a plain function in one of the `hostcalls/*.rs` modules and runs as its own
//! `#[test]`. `every_host_function_is_exercised` runs all of them again in one process and
//! checks the coverage the instances recorded, so it works the same under `cargo test` and
//! `cargo nextest` (one process per test).

#[path = "hostcalls/harness.rs"]
mod harness;
#[path = "hostcalls/spec.rs"]
mod spec;

#[path = "hostcalls/buffers.rs"]
mod buffers;
#[path = "hostcalls/callouts.rs"]
mod callouts;
#[path = "hostcalls/context.rs"]
mod context;
#[path = "hostcalls/errors.rs"]
mod errors;
#[path = "hostcalls/load.rs"]
mod load;
#[path = "hostcalls/maps.rs"]
mod maps;
#[path = "hostcalls/misc.rs"]
mod misc;
#[path = "hostcalls/quotas.rs"]
mod quotas;
#[path = "hostcalls/shared.rs"]
mod shared;
#[path = "hostcalls/stream.rs"]
mod stream;
#[path = "hostcalls/wasi.rs"]
mod wasi;

use std::collections::BTreeSet;

use wasmux::AbiVersion;
use wasmux::abi::{HOST_FUNCS, proxy_funcs};

macro_rules! cases {
    ($($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $module::$name();
            }
        )*

        /// Every case, for the coverage test.
        const ALL_CASES: &[(&str, fn())] = &[$((stringify!($name), $module::$name)),*];
    };
}

cases! {
    spec::host_table_matches_the_reference,
    // Logging, clocks, timers, contexts, configuration.
    context::log_levels_messages_and_attribution,
    context::log_respects_the_host_level,
    context::get_log_level_reports_the_host_level,
    context::current_time_comes_from_the_clock_service,
    context::tick_period_is_set_per_root_context,
    context::set_effective_context_redirects_later_calls,
    context::proxy_done_completes_a_deferred_root,
    context::get_configuration_in_0_1_0,
    context::calls_during_start_are_restricted,
    // Buffers.
    buffers::request_body_get_set_and_status,
    buffers::empty_and_missing_buffers,
    buffers::response_body_and_tcp_data,
    buffers::configuration_buffers_by_version,
    buffers::foreign_function_arguments_buffer,
    // Header maps.
    maps::header_map_reads_and_edits,
    maps::header_map_pairs_replace_whole_maps,
    maps::trailers_and_unavailable_maps,
    maps::allocator_may_not_call_the_host,
    // Stream control and local replies.
    stream::continue_and_close_stream_0_2_x,
    stream::continue_request_response_and_route_cache_0_1_0,
    stream::send_local_response_records_the_reply,
    stream::finished_streams_leave_nothing_behind,
    // Callouts.
    callouts::http_call_dispatch_and_response,
    callouts::failed_http_call_and_get_status,
    callouts::grpc_calls_streams_and_responses,
    // Shared data and queues.
    shared::shared_data_with_cas,
    shared::shared_data_is_partitioned_by_vm_id,
    shared::shared_queues_notify_the_registering_root,
    // Metrics, properties, foreign functions.
    misc::metrics_define_increment_record_get,
    misc::properties_derived_static_and_set,
    misc::foreign_functions,
    // WASI and Emscripten helpers.
    wasi::wasi_functions,
    wasi::wasi_environment_and_unstable_module,
    wasi::poll_oneoff_lets_virtual_time_pass,
    // Error statuses across all functions.
    errors::invalid_memory_access_everywhere,
    errors::bad_enum_arguments,
    errors::allocator_failures,
    // Host-side quotas.
    quotas::header_map_quotas,
    quotas::body_quotas,
    quotas::log_quotas,
    quotas::shared_data_quotas,
    quotas::queue_quotas,
    quotas::metric_quotas,
    quotas::property_quotas,
    quotas::callout_quotas,
    quotas::grpc_pending_send_quota,
    quotas::stream_control_quota,
    quotas::repeated_violations_trap,
    // Load-time validation and traps.
    load::import_not_in_version,
    load::unknown_and_mistyped_imports_in_one_error,
    load::abi_markers,
    load::required_exports,
    load::callback_signatures_per_version,
    load::malformed_bytes,
    load::trap_in_callback,
    load::failure_policies,
}

/// Every `proxy_*` function of each version was called by at least one instance of a module
/// declaring that version; every WASI and Emscripten function by at least one instance.
#[test]
fn every_host_function_is_exercised() {
    let mut failed = Vec::new();
    for (name, case) in ALL_CASES {
        if std::panic::catch_unwind(case).is_err() {
            failed.push(*name);
        }
    }
    let covered = harness::coverage();
    let mut missing = BTreeSet::new();
    for v in AbiVersion::ALL {
        for f in proxy_funcs(v) {
            if !covered.contains(&(v, f.name)) {
                missing.insert(format!("{v} {}", f.name));
            }
        }
    }
    for f in HOST_FUNCS.iter().filter(|f| !f.is_proxy()) {
        if !covered.iter().any(|(_, n)| *n == f.name) {
            missing.insert(format!("any {}", f.name));
        }
    }
    assert!(missing.is_empty(), "host functions never called: {missing:#?}");
    // Failing cases are reported by their own tests; say which ones ran here too.
    if !failed.is_empty() {
        eprintln!("cases that failed while collecting coverage (see their own tests): {failed:?}");
    }
}
