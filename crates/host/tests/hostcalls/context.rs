//! Logging, clocks, timers, contexts and 0.1.0's configuration call.

use std::time::Duration;

use wasmux::{AbiVersion, LogLevel};

use crate::harness::{CLOCK_START, Env, H, MEM_END, SENTINEL, Wat, headers, st};

fn log_wat(v: AbiVersion) -> Wat {
    let mut body = String::new();
    let mut wat = Wat::new(v).data("vm", "vm started").data("never", "never logged");
    for (l, name) in ["trace", "debug", "info", "warn", "error", "critical"].iter().enumerate() {
        wat = wat.data(&format!("m{l}"), format!("{name} msg"));
        body += &st(l as u32, &format!("(call $proxy_log (i32.const {l}) {{m{l}}})"));
    }
    body += &st(6, "(call $proxy_log (i32.const 6) {never})");
    body += &st(7, "(call $proxy_log (i32.const -1) {never})");
    body += &st(8, "(call $proxy_log (i32.const 2) {bad})");
    body += &st(9, "(call $proxy_log (i32.const 2) (i32.const 0) (i32.const 0))");
    // A zero-length message is accepted whatever its pointer.
    body += &st(10, "(call $proxy_log (i32.const 2) (i32.const -16) (i32.const 0))");
    // One byte past the end of memory.
    body += &st(11, &format!("(call $proxy_log (i32.const 2) (i32.const {}) (i32.const 5))", MEM_END - 4));
    body += "(i32.const 0)";
    wat.cb("proxy_on_vm_start", "(drop (call $proxy_log (i32.const 2) {vm})) (i32.const 1)")
        .cb("proxy_on_request_headers", &body)
}

/// `proxy_log`: every level, BAD_ARGUMENT for levels above 5, INVALID_MEMORY_ACCESS for bad
/// ranges, empty messages, and records attributed to the calling context and plugin.
pub(crate) fn log_levels_messages_and_attribution() {
    for v in AbiVersion::ALL {
        let mut h = H::new(&log_wat(v));
        let root = h.root();
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[(":path", "/")]), true).unwrap();
        assert_eq!(h.slots(0, 12), [0, 0, 0, 0, 0, 0, 2, 2, 6, 0, 0, 6], "{v}");
        let logs = h.env.logs();
        let got: Vec<(LogLevel, &str, u32)> =
            logs.iter().map(|r| (r.level, r.message.as_str(), r.context_id)).collect();
        assert_eq!(
            got,
            [
                (LogLevel::Info, "vm started", root),
                (LogLevel::Trace, "trace msg", id),
                (LogLevel::Debug, "debug msg", id),
                (LogLevel::Info, "info msg", id),
                (LogLevel::Warn, "warn msg", id),
                (LogLevel::Error, "error msg", id),
                (LogLevel::Critical, "critical msg", id),
                (LogLevel::Info, "", id),
                (LogLevel::Info, "", id),
            ],
            "{v}"
        );
        for r in &logs {
            assert_eq!((r.vm_id.as_str(), r.root_id.as_str()), ("hc-vm", "hc-root"), "{v}");
        }
    }
}

/// Messages below the host level are dropped but still answer OK.
pub(crate) fn log_respects_the_host_level() {
    for v in AbiVersion::ALL {
        let mut h = H::with(&log_wat(v), Env::default(), |o| o.log_level = LogLevel::Warn);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), true).unwrap();
        assert_eq!(h.slots(0, 9), [0, 0, 0, 0, 0, 0, 2, 2, 6], "{v}");
        assert_eq!(
            h.env.lines(),
            [
                (LogLevel::Warn, "warn msg".to_string()),
                (LogLevel::Error, "error msg".to_string()),
                (LogLevel::Critical, "critical msg".to_string()),
            ],
            "{v}"
        );
    }
}

/// `proxy_get_log_level` (0.2.1): the host level as a u32 (4 bytes only).
pub(crate) fn get_log_level_reports_the_host_level() {
    let wat = Wat::new(AbiVersion::V0_2_1).cb(
        "proxy_on_vm_start",
        &[
            st(0, "(call $proxy_get_log_level {o0.a})"),
            st(1, "(call $proxy_get_log_level {badp})"),
            st(2, &format!("(call $proxy_get_log_level (i32.const {}))", MEM_END - 3)),
            st(3, &format!("(call $proxy_get_log_level (i32.const {}))", MEM_END - 4)),
            "(i32.const 1)".into(),
        ]
        .concat(),
    );
    for level in LogLevel::ALL {
        let mut h = H::with(&wat, Env::default(), |o| o.log_level = *level);
        assert_eq!(h.slots(0, 4), [0, 6, 6, 0], "{level}");
        assert_eq!(h.out_word(0, 0), *level as u32, "{level}");
        assert_eq!(h.out_word(0, 1), SENTINEL, "only four bytes are written");
        assert_eq!(h.u32_at(MEM_END - 4), *level as u32);
    }
}

/// `proxy_get_current_time_nanoseconds`: 8 bytes of the clock service's wall clock.
pub(crate) fn current_time_comes_from_the_clock_service() {
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .cb(
                "proxy_on_vm_start",
                &[
                    st(0, "(call $proxy_get_current_time_nanoseconds {o0.a})"),
                    st(1, "(call $proxy_get_current_time_nanoseconds {badp})"),
                    st(2, &format!("(call $proxy_get_current_time_nanoseconds (i32.const {}))", MEM_END - 7)),
                    st(3, &format!("(call $proxy_get_current_time_nanoseconds (i32.const {}))", MEM_END - 8)),
                    "(i32.const 1)".into(),
                ]
                .concat(),
            )
            .cb("proxy_on_tick", &st(4, "(call $proxy_get_current_time_nanoseconds {o1.a})"));
        let mut h = H::new(&wat);
        assert_eq!(h.slots(0, 4), [0, 6, 6, 0], "{v}");
        assert_eq!(h.out_u64(0), CLOCK_START);
        assert_eq!(h.u64_at(MEM_END - 8), CLOCK_START);
        h.env.clock.advance(Duration::from_millis(1500));
        h.tick();
        assert_eq!(h.slot(4), 0);
        assert_eq!(h.out_u64(1), CLOCK_START + 1_500_000_000, "{v}");
    }
}

/// `proxy_set_tick_period_milliseconds`: the period belongs to the root context (also when a
/// stream sets it), reaches the timer service, and 0 disables it.
pub(crate) fn tick_period_is_set_per_root_context() {
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .cb(
                "proxy_on_vm_start",
                &(st(0, "(call $proxy_set_tick_period_milliseconds (i32.const 250))") + "(i32.const 1)"),
            )
            .cb(
                "proxy_on_tick",
                &format!(
                    "(call $bump (i32.const 0))
                     (if (i32.eq (call $cnt (i32.const 0)) (i32.const 2)) (then {}))",
                    st(1, "(call $proxy_set_tick_period_milliseconds (i32.const 0))")
                ),
            )
            .cb(
                "proxy_on_request_headers",
                &(st(2, "(call $proxy_set_tick_period_milliseconds (i32.const 100))") + "(i32.const 0)"),
            );
        let mut h = H::new(&wat);
        let root = h.root();
        let uid = h.vm().state().uid();
        assert_eq!(h.slot(0), 0);
        assert_eq!(h.plugin.tick_period(), Some(Duration::from_millis(250)), "{v}");
        assert_eq!(h.env.timers.period(uid, root), Some(Duration::from_millis(250)));
        h.plugin.tick().unwrap();
        assert_eq!(h.counter(0), 1);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), true).unwrap();
        assert_eq!(h.slot(2), 0);
        assert_eq!(h.plugin.tick_period(), Some(Duration::from_millis(100)), "{v}: set from a stream");
        assert_eq!(h.env.timers.period(uid, root), Some(Duration::from_millis(100)));
        h.plugin.tick().unwrap();
        assert_eq!((h.counter(0), h.slot(1)), (2, 0));
        assert_eq!(h.plugin.tick_period(), None, "{v}: 0 disables");
        assert_eq!(h.env.timers.period(uid, root), None);
    }
}

/// `proxy_set_effective_context`: unknown ids are BAD_ARGUMENT and change nothing; a known id
/// redirects the following calls of the same callback only.
pub(crate) fn set_effective_context_redirects_later_calls() {
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .data("k", "x-eff")
            .data("val", "yes")
            .data("det", "from-root")
            .cb("proxy_on_request_headers", &(st(10, "(local.get 0)") + "(i32.const 1)"))
            .cb(
                "proxy_on_tick",
                &[
                    st(0, "(call $proxy_set_effective_context (i32.const 9999))"),
                    st(1, "(call $proxy_add_header_map_value (i32.const 0) {k} {val})"),
                    st(2, "(call $proxy_set_effective_context (call $ld (i32.const 10)))"),
                    st(3, "(call $proxy_add_header_map_value (i32.const 0) {k} {val})"),
                    st(4, "(call $proxy_send_local_response (i32.const 429) {det} (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1))"),
                    st(5, "(call $proxy_set_effective_context (i32.const 0))"),
                    st(6, "(call $proxy_get_header_map_value (i32.const 0) {k} {o0})"),
                ]
                .concat(),
            );
        let mut h = H::new(&wat);
        let id = h.stream();
        assert_eq!(h.plugin.request_headers(id, headers(&[(":path", "/")]), false).unwrap(), wasmux::Action::Pause);
        h.tick();
        assert_eq!(h.slots(0, 7), [2, 1, 0, 0, 0, 2, 0], "{v}");
        assert_eq!(h.out_str(0), "yes");
        let s = h.http(id);
        assert_eq!(s.request_headers.get(b"x-eff"), Some(&b"yes"[..]));
        let reply = s.local_reply.expect("local reply on the stream");
        assert_eq!((reply.status_code, reply.details.as_str()), (429, "from-root"));
        // The next callback starts again on its own context.
        h.tick();
        assert_eq!(h.slot(1), 1, "{v}: effective context does not outlive the callback");
        assert_eq!(h.http(id).request_headers.iter().filter(|(k, _)| *k == b"x-eff").count(), 2);
    }
}

/// Teardown as Envoy does it. A stream ends with done, log, delete whatever `proxy_on_done`
/// answers, and `proxy_done` from a stream is NOT_FOUND. A root context ends with done, then
/// delete (no log); when its `proxy_on_done` returns false its delete waits for `proxy_done`
/// (from the root or any of its streams), and runs once that callback returns.
pub(crate) fn proxy_done_completes_a_deferred_root() {
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .cb("proxy_on_request_headers", &(st(0, "(call $proxy_done)") + "(i32.const 0)"))
            .cb("proxy_on_done", "(call $bump (i32.const 0)) (i32.const 0)")
            .cb("proxy_on_log", &("(call $bump (i32.const 1))".to_string() + &st(21, "(local.get 0)")))
            .cb("proxy_on_delete", &("(call $bump (i32.const 2))".to_string() + &st(22, "(local.get 0)")))
            .cb(
                "proxy_on_tick",
                &[st(1, "(call $proxy_done)"), st(2, "(call $proxy_done)"), st(3, "(call $cnt (i32.const 2))")]
                    .concat(),
            );
        let mut h = H::new(&wat);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), true).unwrap();
        assert_eq!(h.slot(0), 1, "{v}: nothing pending: NOT_FOUND");
        assert!(h.vm().finish(id).unwrap(), "{v}: a stream finishes whatever on_done answers");
        assert_eq!((h.counter(0), h.counter(1), h.counter(2)), (1, 1, 1), "{v}");
        assert_eq!((h.slot(21), h.slot(22)), (id, id), "{v}");
        assert!(!h.vm().context_exists(id));

        let root = h.root();
        assert!(!h.vm().finish(root).unwrap(), "{v}: on_done returned 0, shutdown deferred");
        assert!(h.vm().context_exists(root));
        assert!(h.vm().finish(root).is_err(), "already finishing");
        h.tick();
        assert_eq!(h.slots(1, 3), [0, 1, 1], "{v}: done, done again (NOT_FOUND), the root's delete not yet run");
        assert_eq!((h.counter(1), h.counter(2)), (1, 2), "{v}: no log for the root; delete ran");
        assert_eq!(h.slot(22), root, "{v}");
        assert!(!h.vm().context_exists(root));
    }
}

/// `proxy_get_configuration` (0.1.0): the VM configuration in `proxy_on_vm_start`, the plugin
/// configuration in `proxy_on_configure`, the VM configuration elsewhere; empty is (0, 0)
/// without an allocation.
pub(crate) fn get_configuration_in_0_1_0() {
    let wat = Wat::new(AbiVersion::V0_1_0)
        .cb(
            "proxy_on_vm_start",
            &(st(5, "(local.get 1)") + &st(0, "(call $proxy_get_configuration {o0})") + "(i32.const 1)"),
        )
        .cb(
            "proxy_on_configure",
            &(st(6, "(local.get 1)")
                + &st(1, "(call $proxy_get_configuration {o1})")
                + &st(7, "(call $mallocs)")
                + "(i32.const 1)"),
        )
        .cb(
            "proxy_on_request_headers",
            &[
                st(2, "(call $proxy_get_configuration {o2})"),
                st(3, "(call $proxy_get_configuration {badp} {o3.b})"),
                st(4, "(call $proxy_get_configuration {o3.a} {badp})"),
                "(i32.const 0)".into(),
            ]
            .concat(),
        );
    let mut h = H::with(&wat, Env::default(), |o| {
        o.vm_configuration = b"vm-config-bytes".to_vec();
        o.plugin_configuration = br#"{"plugin":true}"#.to_vec();
    });
    assert_eq!(h.slots(0, 2), [0, 0]);
    assert_eq!((h.slot(5), h.slot(6)), (15, 15), "sizes passed to on_vm_start and on_configure");
    assert_eq!(h.out_str(0), "vm-config-bytes");
    assert_eq!(h.out_str(1), r#"{"plugin":true}"#);
    let id = h.stream();
    h.plugin.request_headers(id, headers(&[]), true).unwrap();
    assert_eq!(h.slots(2, 3), [0, 6, 6]);
    assert_eq!(h.out_str(2), "vm-config-bytes");

    let mut h = H::new(&wat);
    assert_eq!(h.slots(0, 2), [0, 0]);
    assert_eq!(h.out(0), (0, 0));
    assert_eq!(h.out(1), (0, 0));
    assert_eq!(h.slot(7), 0, "no allocation for an empty configuration");
}

/// During start-up (`_start` here) the guest may call what proxy-wasm-cpp-host allows there:
/// `proxy_log` and the WASI functions, attributed to context 0. Any other host function traps
/// with `restricted`, and the plugin does not start.
pub(crate) fn calls_during_start_are_restricted() {
    for v in AbiVersion::ALL {
        let w = Wat::new(v).data("msg", "in start").data("k", "k").data("out", "stdout\n");
        let iov: Vec<u8> = [w.addr("out").0, w.addr("out").1].iter().flat_map(|x| x.to_le_bytes()).collect();
        let allowed = w.clone().data("iov", iov).func(&format!(
            "(func (export \"_start\") {})",
            [
                st(0, "(call $proxy_log (i32.const 2) {msg})"),
                st(1, "(call $fd_write (i32.const 1) {iov.p} (i32.const 1) {o2.a})"),
                st(2, "(call $clock_time_get (i32.const 0) (i64.const 1) {o1.a})"),
            ]
            .concat()
        ));
        let mut h = H::new(&allowed);
        assert_eq!(h.slots(0, 3), [0, 0, 0], "{v}");
        let logs = h.env.logs();
        let got: Vec<(u32, &str, &str)> =
            logs.iter().map(|r| (r.context_id, r.root_id.as_str(), r.message.as_str())).collect();
        assert_eq!(got, [(0, "", "in start"), (0, "", "stdout")], "{v}");

        for call in [
            "(call $proxy_set_tick_period_milliseconds (i32.const 100))",
            "(call $proxy_get_header_map_value (i32.const 0) {k} {o0})",
            "(call $proxy_done)",
            "(call $proxy_set_property {k} {k})",
            "(call $proxy_register_shared_queue {k} {o0.a})",
            "(call $proxy_get_current_time_nanoseconds {o1.a})",
            "(call $proxy_set_shared_data {k} {k} (i32.const 0))",
            "(call $proxy_set_effective_context (i32.const 1))",
            "(call $sched_yield)",
        ] {
            let wat = w.clone().func(&format!("(func (export \"_start\") {})", st(0, call)));
            let env = Env::default();
            let compiled = crate::harness::load(&wat, &env, |_| {}).expect("load");
            match compiled.instantiate() {
                Err(wasmux::Error::Trap(t)) => {
                    assert_eq!(t.kind, wasmux::TrapKind::Restricted, "{v} {call}: {t}");
                    assert_eq!(t.export.as_deref(), Some("_start"), "{v} {call}");
                }
                other => panic!("{v} {call}: expected a restricted trap, got {other:?}"),
            }
            assert!(env.callouts.events().is_empty());
        }
    }
}
