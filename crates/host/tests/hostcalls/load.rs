//! Load-time validation through `Runtime::load`, traps, and the failure policy.

use wasmux::abi::Incompatibility;
use wasmux::{AbiVersion, Action, Error, FailurePolicy, PluginOptions, Runtime, TrapKind};

use crate::harness::{Env, H, Wat, headers};

fn load_err(wat: &Wat) -> Vec<Incompatibility> {
    match Runtime::default().load(&wat.bytes(), PluginOptions::default()) {
        Err(Error::Incompatible(list)) => list,
        Err(other) => panic!("expected Error::Incompatible, got {other}"),
        Ok(_) => panic!("expected Error::Incompatible, the module loaded:\n{}", wat.text()),
    }
}

fn loads(wat: &Wat) -> AbiVersion {
    match Runtime::default().load(&wat.bytes(), PluginOptions::default()) {
        Ok(c) => c.info().abi,
        Err(e) => panic!("module should load: {e}\n{}", wat.text()),
    }
}

fn env_import(name: &str, ty: &str) -> String {
    format!(r#"(import "env" "{name}" (func (type {ty})))"#)
}

/// A host function outside the module's ABI version is reported with the version, and the
/// same import loads in a version that has it.
pub(crate) fn import_not_in_version() {
    let cases = [
        (AbiVersion::V0_1_0, "proxy_continue_stream", "$i_i", AbiVersion::V0_2_0),
        (AbiVersion::V0_1_0, "proxy_close_stream", "$i_i", AbiVersion::V0_2_1),
        (AbiVersion::V0_1_0, "proxy_get_log_level", "$i_i", AbiVersion::V0_2_1),
        (AbiVersion::V0_2_0, "proxy_get_log_level", "$i_i", AbiVersion::V0_2_1),
        (AbiVersion::V0_2_0, "proxy_get_configuration", "$ii_i", AbiVersion::V0_1_0),
        (AbiVersion::V0_2_1, "proxy_continue_request", "$_i", AbiVersion::V0_1_0),
        (AbiVersion::V0_2_1, "proxy_continue_response", "$_i", AbiVersion::V0_1_0),
        (AbiVersion::V0_2_0, "proxy_clear_route_cache", "$_i", AbiVersion::V0_1_0),
    ];
    let types = "(type $i_i (func (param i32) (result i32)))
                 (type $ii_i (func (param i32 i32) (result i32)))
                 (type $_i (func (result i32)))";
    for (v, name, ty, ok_in) in cases {
        let module = |v| Wat::new(v).import(types).import(&env_import(name, ty));
        let problems = load_err(&module(v));
        let want = Incompatibility::ImportNotInVersion { module: "env".into(), name: name.into(), version: v.as_str() };
        assert_eq!(problems, [want], "{v} {name}");
        let msg = Error::Incompatible(problems).to_string();
        assert!(msg.contains(&format!("not part of proxy-wasm ABI {v}")), "{msg}");
        assert_eq!(loads(&module(ok_in)), ok_in, "{name} in {ok_in}");
    }
}

/// Unknown, mistyped and non-function imports are all listed in one error, in import order.
pub(crate) fn unknown_and_mistyped_imports_in_one_error() {
    let wat = Wat::new(AbiVersion::V0_2_1)
        .import(r#"(import "env" "proxy_nope" (func (param i32) (result i32)))"#)
        .import(r#"(import "env" "proxy_log" (func (param i32 i32) (result i32)))"#)
        .import(r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32)))"#)
        .import(r#"(import "other" "thing" (func))"#)
        .import(r#"(import "env" "proxy_get_status" (func (param i32 i32 i32) (result i32)))"#)
        .import(r#"(import "env" "g" (global i32))"#);
    let problems = load_err(&wat);
    assert_eq!(
        problems,
        [
            Incompatibility::UnknownImport { module: "env".into(), name: "proxy_nope".into() },
            Incompatibility::ImportSignature {
                module: "env".into(),
                name: "proxy_log".into(),
                expected: "(i32, i32, i32) -> (i32)".into(),
                found: "(i32, i32) -> (i32)".into(),
            },
            Incompatibility::ImportSignature {
                module: "wasi_snapshot_preview1".into(),
                name: "fd_write".into(),
                expected: "(i32, i32, i32, i32) -> (i32)".into(),
                found: "(i32) -> (i32)".into(),
            },
            Incompatibility::UnknownImport { module: "other".into(), name: "thing".into() },
            Incompatibility::UnsupportedImport { module: "env".into(), name: "g".into(), kind: "global".into() },
        ]
    );
    let msg = Error::Incompatible(problems).to_string();
    for needle in ["proxy_nope", "mistyped import `env.proxy_log`", "fd_write", "other.thing", "env.g"] {
        assert!(msg.contains(needle), "{needle} in {msg}");
    }
}

/// ABI detection from the `proxy_abi_version_*` marker exports.
pub(crate) fn abi_markers() {
    for v in AbiVersion::ALL {
        assert_eq!(loads(&Wat::new(v)), v);
    }
    assert_eq!(load_err(&Wat::new(AbiVersion::V0_2_1).without_marker()), [Incompatibility::MissingAbiMarker]);
    let two = Wat::new(AbiVersion::V0_1_0).func(r#"(func (export "proxy_abi_version_0_2_1"))"#);
    assert_eq!(
        load_err(&two),
        [Incompatibility::ConflictingAbiMarkers(vec![
            "proxy_abi_version_0_1_0".into(),
            "proxy_abi_version_0_2_1".into()
        ])]
    );
    let unknown = Wat::new(AbiVersion::V0_2_1).without_marker().func(r#"(func (export "proxy_abi_version_0_3_0"))"#);
    assert_eq!(load_err(&unknown), [Incompatibility::UnknownAbiMarker("proxy_abi_version_0_3_0".into())]);
    let unknown_and_known = Wat::new(AbiVersion::V0_2_0).func(r#"(func (export "proxy_abi_version_0_3_0"))"#);
    assert_eq!(loads(&unknown_and_known), AbiVersion::V0_2_0);
    // A marker that is not a function does not count.
    let global = Wat::new(AbiVersion::V0_2_1)
        .without_marker()
        .func(r#"(global (export "proxy_abi_version_0_2_1") i32 (i32.const 0))"#);
    assert_eq!(load_err(&global), [Incompatibility::MissingAbiMarker]);
    // Without a marker, imports are still checked (against the newest version).
    let both = Wat::new(AbiVersion::V0_2_1)
        .without_marker()
        .import(r#"(import "env" "proxy_get_configuration" (func (param i32 i32) (result i32)))"#);
    assert_eq!(
        load_err(&both),
        [
            Incompatibility::MissingAbiMarker,
            Incompatibility::ImportNotInVersion {
                module: "env".into(),
                name: "proxy_get_configuration".into(),
                version: "0.2.1",
            },
        ]
    );
}

/// `memory` and an allocator (`malloc` or `proxy_on_memory_allocate`) are required.
pub(crate) fn required_exports() {
    let allocator = Incompatibility::MissingExport("malloc or proxy_on_memory_allocate".into());
    let memory = Incompatibility::MissingExport("memory".into());
    assert_eq!(load_err(&Wat::new(AbiVersion::V0_2_1).without_malloc()), std::slice::from_ref(&allocator));
    assert_eq!(load_err(&Wat::new(AbiVersion::V0_1_0).without_memory()), std::slice::from_ref(&memory));
    assert_eq!(load_err(&Wat::new(AbiVersion::V0_2_0).without_memory().without_malloc()), [memory, allocator]);
    let mistyped = Wat::new(AbiVersion::V0_2_1)
        .without_malloc()
        .func(r#"(func (export "malloc") (param i64) (result i32) (i32.const 0))"#);
    let problems = load_err(&mistyped);
    assert!(
        problems.contains(&Incompatibility::ExportSignature {
            name: "malloc".into(),
            expected: "(i32) -> (i32)".into(),
            found: "(i64) -> (i32)".into(),
        }),
        "{problems:?}"
    );
}

/// Callback signatures are checked against the module's version: headers callbacks have two
/// parameters in 0.1.0 and three from 0.2.0; callbacks of other versions are ignored.
pub(crate) fn callback_signatures_per_version() {
    let three = r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))"#;
    let two = r#"(func (export "proxy_on_response_headers") (param i32 i32) (result i32) (i32.const 0))"#;
    assert_eq!(
        load_err(&Wat::new(AbiVersion::V0_1_0).func(three)),
        [Incompatibility::ExportSignature {
            name: "proxy_on_request_headers".into(),
            expected: "(i32, i32) -> (i32)".into(),
            found: "(i32, i32, i32) -> (i32)".into(),
        }]
    );
    assert_eq!(loads(&Wat::new(AbiVersion::V0_1_0).func(two)), AbiVersion::V0_1_0);
    for v in [AbiVersion::V0_2_0, AbiVersion::V0_2_1] {
        assert_eq!(loads(&Wat::new(v).func(three)), v);
        assert_eq!(
            load_err(&Wat::new(v).func(two)),
            [Incompatibility::ExportSignature {
                name: "proxy_on_response_headers".into(),
                expected: "(i32, i32, i32) -> (i32)".into(),
                found: "(i32, i32) -> (i32)".into(),
            }],
            "{v}"
        );
    }
    let tick = r#"(func (export "proxy_on_tick") (param i32) (result i32) (i32.const 0))"#;
    assert!(matches!(
        load_err(&Wat::new(AbiVersion::V0_2_1).func(tick)).as_slice(),
        [Incompatibility::ExportSignature { name, .. }] if name == "proxy_on_tick"
    ));
    // proxy_on_foreign_function is not a 0.1.0 callback: any signature is fine there.
    let foreign = r#"(func (export "proxy_on_foreign_function") (param i64))"#;
    assert_eq!(loads(&Wat::new(AbiVersion::V0_1_0).func(foreign)), AbiVersion::V0_1_0);
}

/// Bytes that are not wasm are a compile error.
pub(crate) fn malformed_bytes() {
    for bytes in [&b"not wasm at all"[..], b"\0asm\x01\0\0\0\x01\xff", b""] {
        match Runtime::default().load(bytes, PluginOptions::default()) {
            Err(Error::Compile { engine, .. }) => assert_eq!(engine, "wasmtime"),
            other => panic!("expected Error::Compile, got {other:?}"),
        }
    }
}

fn trapping_wat(v: AbiVersion) -> Wat {
    Wat::new(v)
        .cb("proxy_on_request_headers", "unreachable")
        .cb("proxy_on_response_headers", "(i32.div_u (i32.const 1) (i32.const 0))")
}

/// A trap surfaces through `Vm` as `Error::Trap` naming the export and the normalized kind;
/// the VM is failed afterwards.
pub(crate) fn trap_in_callback() {
    for v in AbiVersion::ALL {
        let mut h = H::new(&trapping_wat(v));
        let id = h.stream();
        let err = h.vm().on_request_headers(id, headers(&[(":path", "/")]), true).unwrap_err();
        let Error::Trap(trap) = &err else { panic!("{v}: expected a trap, got {err}") };
        assert_eq!(trap.kind, TrapKind::Unreachable, "{v}");
        assert_eq!(trap.export.as_deref(), Some("proxy_on_request_headers"), "{v}");
        assert_eq!(trap.engine, "wasmtime");
        assert!(err.to_string().contains("proxy_on_request_headers"), "{err}");
        assert!(h.vm().failure().is_some());
        assert!(matches!(h.vm().on_response_headers(id, headers(&[]), true), Err(Error::Failed(_))), "{v}");

        let mut h2 = h.another();
        let id = h2.stream();
        let err = h2.vm().on_response_headers(id, headers(&[]), true).unwrap_err();
        let trap = err.trap().expect("trap");
        assert_eq!(
            (trap.kind, trap.export.as_deref()),
            (TrapKind::Arithmetic, Some("proxy_on_response_headers")),
            "{v}"
        );
    }
}

/// Through `Plugin`, the failure policy answers the stream instead: FailClosed (the default)
/// pauses it with a 503 local reply, FailOpen continues it.
pub(crate) fn failure_policies() {
    for v in AbiVersion::ALL {
        let mut h = H::new(&trapping_wat(v));
        let id = h.stream();
        assert_eq!(h.plugin.request_headers(id, headers(&[]), true).unwrap(), Action::Pause, "{v}");
        let reply = h.http(id).local_reply.expect("fail-closed reply");
        assert_eq!((reply.status_code, reply.details.as_str()), (503, "wasm_fail_stream"));
        let stats = h.plugin.stats();
        assert_eq!((stats.failures, stats.failed_streams), (1, 1));

        let mut h = H::with(&trapping_wat(v), Env::default(), |o| o.failure_policy = FailurePolicy::FailOpen);
        let id = h.stream();
        assert_eq!(h.plugin.request_headers(id, headers(&[]), true).unwrap(), Action::Continue, "{v}");
        assert_eq!(h.http(id).local_reply, None);
        assert_eq!(h.plugin.stats().failures, 1);
    }
}
