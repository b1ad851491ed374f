//! Sandbox limits and failure policy, on every sandboxed engine compiled in.
//!
//! - a CPU deadline stops an infinite loop with `TrapKind::Deadline` (the elapsed time is
//!   printed, never asserted: `cargo test -- --nocapture` shows it);
//! - a memory cap makes `memory.grow` fail, and the trap that follows is `MemoryLimit`;
//! - deep recursion is `StackOverflow`;
//! - after each, the host keeps running: the same compiled plugin gives fresh, working
//!   instances, and another plugin in the process is not disturbed;
//! - the failure policies: fail closed (503), fail open (continue), reload (a fresh VM after
//!   the backoff, counted in the stats);
//! - plugins sharing one VM (root contexts of one instance): each stream gets its own plugin's
//!   policy, and a reload restarts every root context;
//! - a snapshot the guest's memory would make larger than `max_module_bytes` is not taken.

use std::time::{Duration, Instant};

use wasmux::abi::Limits;
use wasmux::{Action, CompiledPlugin, Error, FailurePolicy, HeaderMap, PluginOptions, RootOptions, Runtime, TrapKind};

/// A filter whose request-headers callback misbehaves according to the `:path` length:
/// 1 byte loops forever, 2 bytes grows memory until it fails and then traps, 3 bytes recurses
/// without end, anything else continues.
const FILTER: &str = r#"
(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) ":path")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func $recurse (param i32) (result i32) (i32.add (call $recurse (i32.add (local.get 0) (i32.const 1))) (i32.const 1)))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $len i32)
    (drop (call $get (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 64) (i32.const 68)))
    (local.set $len (i32.load (i32.const 68)))
    (if (i32.eq (local.get $len) (i32.const 1)) (then (loop $forever (br $forever))))
    (if (i32.eq (local.get $len) (i32.const 2))
      (then
        (loop $grow
          (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
        unreachable))
    (if (i32.eq (local.get $len) (i32.const 3)) (then (drop (call $recurse (i32.const 0)))))
    (i32.const 0))
)
"#;

fn sandboxed() -> impl Iterator<Item = Runtime> {
    Runtime::available().iter().copied().filter(|r| r.name() != "null")
}

fn options(policy: FailurePolicy) -> PluginOptions {
    PluginOptions {
        limits: Limits {
            max_memory_bytes: 4 << 20,
            callback_deadline: Some(Duration::from_millis(100)),
            ..Limits::default()
        },
        failure_policy: policy,
        ..PluginOptions::default()
    }
}

fn headers(path: &str) -> HeaderMap {
    HeaderMap::from_pairs([(":path", path)])
}

/// Runs one request straight on the VM (no policy) and returns the trap kind.
fn trap_kind(rt: Runtime, path: &str) -> (TrapKind, Duration) {
    let wasm = wat::parse_str(FILTER).expect("wat");
    let compiled = rt.load(&wasm, options(FailurePolicy::FailClosed)).expect("load");
    let mut plugin = compiled.instantiate().expect("instantiate");
    let id = plugin.http_stream().expect("stream");
    let start = Instant::now();
    let err = plugin.vm().on_request_headers(id, headers(path), true).expect_err("must trap");
    let elapsed = start.elapsed();
    let Error::Trap(t) = err else { panic!("{rt}: expected a trap, got {err}") };
    assert_eq!(t.export.as_deref(), Some("proxy_on_request_headers"), "{rt}");
    // The VM is failed; a fresh instance of the same compiled plugin works.
    assert!(plugin.vm().failure().is_some());
    let mut fresh = compiled.instantiate().expect("fresh instance");
    let id = fresh.http_stream().expect("stream");
    assert_eq!(fresh.request_headers(id, headers("/okay"), true).expect("ok"), Action::Continue, "{rt}");
    (t.kind, elapsed)
}

#[test]
fn cpu_deadline_stops_an_infinite_loop() {
    for rt in sandboxed() {
        let (kind, elapsed) = trap_kind(rt, "/");
        assert_eq!(kind, TrapKind::Deadline, "{rt}");
        eprintln!("{rt}: infinite loop with a 100 ms deadline stopped after {elapsed:?}");
    }
}

#[test]
fn memory_cap_holds() {
    for rt in sandboxed() {
        assert_eq!(trap_kind(rt, "/m").0, TrapKind::MemoryLimit, "{rt}");
    }
}

#[test]
fn deep_recursion_is_a_stack_overflow() {
    for rt in sandboxed() {
        assert_eq!(trap_kind(rt, "/st").0, TrapKind::StackOverflow, "{rt}");
    }
}

#[test]
fn fail_closed_answers_503_and_keeps_other_plugins_running() {
    let wasm = wat::parse_str(FILTER).expect("wat");
    for rt in sandboxed() {
        let bad = rt.load(&wasm, options(FailurePolicy::FailClosed)).expect("load");
        let good = rt.load(&wasm, options(FailurePolicy::FailClosed)).expect("load");
        let mut bad = bad.instantiate().expect("instantiate");
        let mut good = good.instantiate().expect("instantiate");
        let id = bad.http_stream().expect("stream");
        assert_eq!(bad.request_headers(id, headers("/st"), true).expect("policy answers"), Action::Pause);
        let reply = bad.vm().http(id).expect("state").local_reply.clone().expect("503");
        assert_eq!((reply.status_code, reply.details.as_str()), (503, "wasm_fail_stream"), "{rt}");
        assert_eq!(bad.stats().failures, 1);
        // Later streams on the failed VM fail closed too, without running guest code.
        let id2 = bad.http_stream().expect("stream");
        assert_eq!(bad.request_headers(id2, headers("/okay"), true).expect("policy"), Action::Pause);
        assert_eq!(bad.stats().failed_streams, 2);
        // The other plugin is untouched.
        let g = good.http_stream().expect("stream");
        assert_eq!(good.request_headers(g, headers("/okay"), true).expect("ok"), Action::Continue, "{rt}");
    }
}

#[test]
fn fail_open_skips_the_plugin() {
    let wasm = wat::parse_str(FILTER).expect("wat");
    for rt in sandboxed() {
        let mut p = rt.load(&wasm, options(FailurePolicy::FailOpen)).expect("load").instantiate().expect("inst");
        let id = p.http_stream().expect("stream");
        assert_eq!(p.request_headers(id, headers("/st"), true).expect("policy"), Action::Continue, "{rt}");
        assert!(p.vm().http(id).expect("state").local_reply.is_none());
        assert_eq!(p.stats().failures, 1);
    }
}

#[test]
fn reload_replaces_the_vm_after_the_backoff() {
    let wasm = wat::parse_str(FILTER).expect("wat");
    let policy = FailurePolicy::Reload { base_backoff: Duration::ZERO, max_backoff: Duration::from_secs(1) };
    for rt in sandboxed() {
        let mut p = rt.load(&wasm, options(policy)).expect("load").instantiate().expect("inst");
        let id = p.http_stream().expect("stream");
        assert_eq!(p.request_headers(id, headers("/st"), true).expect("policy"), Action::Pause, "{rt}");
        assert!(p.vm().failure().is_some());
        // The next stream triggers the reload: a fresh VM from the compiled module.
        let id = p.http_stream().expect("stream on the reloaded VM");
        assert!(p.vm().failure().is_none(), "{rt}: VM was not replaced");
        assert_eq!(p.request_headers(id, headers("/okay"), true).expect("ok"), Action::Continue, "{rt}");
        let s = p.stats();
        assert_eq!((s.failures, s.reloads, s.reload_failures), (1, 1, 0), "{rt}");
    }
}

#[test]
fn reload_waits_for_the_backoff() {
    let wasm = wat::parse_str(FILTER).expect("wat");
    let policy =
        FailurePolicy::Reload { base_backoff: Duration::from_secs(3600), max_backoff: Duration::from_secs(3600) };
    for rt in sandboxed() {
        let mut p = rt.load(&wasm, options(policy)).expect("load").instantiate().expect("inst");
        let id = p.http_stream().expect("stream");
        p.request_headers(id, headers("/st"), true).expect("policy");
        // Within the backoff the failed VM stays; its streams fail closed.
        let id = p.http_stream().expect("stream");
        assert_eq!(p.request_headers(id, headers("/okay"), true).expect("policy"), Action::Pause, "{rt}");
        assert_eq!(p.stats().reloads, 0);
    }
}

fn sibling(
    first: &std::sync::Arc<CompiledPlugin>,
    name: &str,
    policy: FailurePolicy,
) -> std::sync::Arc<CompiledPlugin> {
    first.sibling(RootOptions { name: name.into(), failure_policy: policy, ..RootOptions::default() })
}

#[test]
fn plugins_sharing_a_vm_answer_with_their_own_policy() {
    let wasm = wat::parse_str(FILTER).expect("wat");
    for rt in sandboxed() {
        let first = rt.load(&wasm, options(FailurePolicy::FailClosed)).expect("load");
        let open = sibling(&first, "open", FailurePolicy::FailOpen);
        assert!(open.shares_vm_with(&first) && first.shares_vm_with(&open));
        let other = rt.load(&wasm, options(FailurePolicy::FailClosed)).expect("load");
        assert!(!other.shares_vm_with(&first), "{rt}: separately loaded plugins have separate VMs");

        let mut p = CompiledPlugin::instantiate_group(&[first.clone(), open]).expect("group");
        let roots = [p.root_context_of(0).expect("root 0"), p.root_context_of(1).expect("root 1")];
        assert_eq!(roots, [1, 2], "{rt}: two root contexts of one instance");
        assert_eq!(p.root_context_of(2), None);
        assert_eq!(p.plugins().map(|c| c.options().name.clone()).collect::<Vec<_>>(), ["", "open"]);
        let refused = p.add_root(&other).expect_err("a plugin of another VM");
        assert!(refused.to_string().contains("does not share the VM"), "{rt}: {refused}");
        assert!(p.http_stream_for(5).is_err(), "{rt}: unknown root index");

        // The fail-open plugin's stream traps: it continues without the filter.
        let id = p.http_stream_for(1).expect("stream of `open`");
        assert_eq!(p.vm().root_of(id), Some(roots[1]));
        assert_eq!(p.request_headers(id, headers("/st"), true).expect("policy"), Action::Continue, "{rt}");
        assert!(p.vm().http(id).expect("state").local_reply.is_none());
        // The VM failed for both plugins; the fail-closed one answers 503.
        let id = p.http_stream().expect("stream of the first plugin");
        assert_eq!(p.request_headers(id, headers("/okay"), true).expect("policy"), Action::Pause, "{rt}");
        let reply = p.vm().http(id).expect("state").local_reply.clone().expect("503");
        assert_eq!(reply.status_code, 503, "{rt}");
        let s = p.stats();
        assert_eq!((s.failures, s.failed_streams), (2, 2), "{rt}");
    }
}

#[test]
fn a_reload_restarts_every_plugin_of_the_vm() {
    let wasm = wat::parse_str(FILTER).expect("wat");
    let reload = FailurePolicy::Reload { base_backoff: Duration::ZERO, max_backoff: Duration::from_secs(1) };
    for rt in sandboxed() {
        let first = rt.load(&wasm, options(reload)).expect("load");
        let closed = sibling(&first, "closed", FailurePolicy::FailClosed);
        let mut p = CompiledPlugin::instantiate_group(&[first, closed]).expect("group");
        // A trap on the fail-closed plugin's stream: 503, and the VM is due for a reload
        // because the other plugin of the VM asks for reloads.
        let id = p.http_stream_for(1).expect("stream");
        assert_eq!(p.request_headers(id, headers("/st"), true).expect("policy"), Action::Pause, "{rt}");
        assert!(p.vm().failure().is_some());
        let id = p.http_stream_for(1).expect("stream on the reloaded VM");
        assert!(p.vm().failure().is_none(), "{rt}: VM was not replaced");
        assert_eq!(p.vm().roots(), [1, 2], "{rt}: both root contexts restarted");
        assert_eq!(p.vm().root_of(id), p.root_context_of(1));
        assert_eq!(p.request_headers(id, headers("/okay"), true).expect("ok"), Action::Continue, "{rt}");
        let id = p.http_stream().expect("stream of the first plugin");
        assert_eq!(p.request_headers(id, headers("/okay"), true).expect("ok"), Action::Continue, "{rt}");
        let s = p.stats();
        assert_eq!((s.failures, s.reloads, s.reload_failures), (1, 1, 0), "{rt}");
    }
}

/// A root-context callback run through `Plugin::root_callback` (here a foreign function that
/// traps) goes under the plugin's failure policy, as the wrapped ones do: the trap is recorded
/// and counted, and the next stream gets a reloaded VM.
#[test]
fn a_trap_in_an_unwrapped_root_callback_is_counted_and_reloads() {
    let wasm = wat::parse_str(
        r#"(module
          (memory (export "memory") 1)
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "malloc") (param i32) (result i32) (i32.const 1024))
          (func (export "proxy_on_context_create") (param i32 i32))
          (func (export "proxy_on_foreign_function") (param i32 i32 i32) unreachable))"#,
    )
    .expect("wat");
    let policy = FailurePolicy::Reload { base_backoff: Duration::ZERO, max_backoff: Duration::from_secs(1) };
    for rt in sandboxed() {
        let mut p = rt.load(&wasm, options(policy)).expect("load").instantiate().expect("inst");
        let root = p.root_context_of(0).expect("root");
        assert!(p.root_callback(|vm| vm.on_foreign_function(root, 1, Vec::new())).is_err(), "{rt}");
        assert!(p.take_trap().is_some(), "{rt}: the trap is recorded");
        assert_eq!(p.stats().failures, 1, "{rt}");
        p.http_stream().expect("stream on the reloaded VM");
        assert_eq!(p.stats().reloads, 1, "{rt}");
    }
}

/// A snapshot is a module the host writes from the guest's memory, so it is bounded like any
/// module: a start that fills more memory than `max_module_bytes` allows gets no snapshot (the
/// status says why) and its instances start normally.
#[test]
fn a_snapshot_over_the_module_size_limit_is_not_taken() {
    // `_initialize` fills 2 MiB with non-zero bytes: a snapshot of at least that size.
    let wat = r#"(module
      (memory (export "memory") 40)
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "malloc") (param i32) (result i32) (i32.const 1024))
      (func (export "_initialize") (memory.fill (i32.const 65536) (i32.const 7) (i32.const 2097152)))
      (func (export "proxy_on_context_create") (param i32 i32)))"#;
    let bytes = wat::parse_str(wat).expect("wat");
    for rt in sandboxed() {
        let fits = |max_module_bytes: usize| {
            let options = PluginOptions {
                limits: Limits { max_module_bytes, ..Limits::default() },
                snapshot: wasmux::SnapshotPolicy::WhenSafe,
                ..PluginOptions::default()
            };
            let compiled = rt.load(&bytes, options).expect("loads");
            compiled.instantiate().expect("instances start");
            compiled.snapshot_status()
        };
        assert!(matches!(fits(Limits::DEFAULT_MAX_MODULE), wasmux::SnapshotStatus::Taken { .. }), "{rt}");
        let status = fits(1 << 20).to_string();
        assert!(status.contains("the snapshot is too large"), "{rt}: {status}");
    }
}
