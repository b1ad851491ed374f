//! Host functions called with arbitrary arguments against a live instance.
//!
//! For each ABI version a module imports every host function of that version (and every WASI
//! function) and exports a wrapper `c<i>` with the same signature. The input picks a version,
//! then a sequence of (function, arguments); each input gets a fresh instance with an HTTP
//! stream as the effective context. Any status or trap is fine; a host panic is a bug.
#![no_main]

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use wasmux::abi::{AbiVersion, HOST_FUNCS, HostFunc, Limits, ValType};
use wasmux::{CompiledPlugin, HeaderMap, PluginOptions, Runtime};

struct Target {
    compiled: Arc<CompiledPlugin>,
    funcs: Vec<&'static HostFunc>,
}

fn module(version: AbiVersion) -> (String, Vec<&'static HostFunc>) {
    let funcs: Vec<&'static HostFunc> =
        HOST_FUNCS.iter().filter(|f| !f.is_proxy() || f.versions.contains(version)).collect();
    let ty = |t: &ValType| if *t == ValType::I64 { "i64" } else { "i32" };
    let mut w = String::from("(module\n");
    for (i, f) in funcs.iter().enumerate() {
        let params: Vec<&str> = f.params.iter().map(ty).collect();
        let result = f.results.first().map(|r| format!("(result {})", ty(r))).unwrap_or_default();
        let _ = writeln!(
            w,
            "(import \"{}\" \"{}\" (func $f{i} (param {}) {result}))",
            f.module_names()[0],
            f.name,
            params.join(" ")
        );
    }
    let _ = writeln!(w, "(memory (export \"memory\") 4)");
    let _ = writeln!(w, "(global $bump (mut i32) (i32.const 65536))");
    let _ = writeln!(w, "(func (export \"{}\"))", version.marker());
    // A bump allocator over the upper pages that starts over when it runs out.
    let _ = writeln!(
        w,
        "(func (export \"malloc\") (param $n i32) (result i32) (local $p i32)
           (if (i32.gt_u (i32.add (global.get $bump) (local.get $n)) (i32.const 262144))
             (then (global.set $bump (i32.const 65536))))
           (if (i32.gt_u (local.get $n) (i32.const 196608)) (then (return (i32.const 0))))
           (local.set $p (global.get $bump))
           (global.set $bump (i32.add (global.get $bump) (local.get $n)))
           (local.get $p))"
    );
    let _ = writeln!(w, "(func (export \"proxy_on_context_create\") (param i32 i32))");
    for (i, f) in funcs.iter().enumerate() {
        let params: Vec<&str> = f.params.iter().map(ty).collect();
        let result = f.results.first().map(|r| format!("(result {})", ty(r))).unwrap_or_default();
        let args: String = (0..f.params.len()).map(|a| format!(" (local.get {a})")).collect();
        let _ = writeln!(w, "(func (export \"c{i}\") (param {}) {result} (call $f{i}{args}))", params.join(" "));
    }
    w.push(')');
    (w, funcs)
}

fn targets() -> &'static [Target] {
    static T: OnceLock<Vec<Target>> = OnceLock::new();
    T.get_or_init(|| {
        let engine = Runtime::default().engine().expect("engine");
        AbiVersion::ALL
            .into_iter()
            .map(|v| {
                let (text, funcs) = module(v);
                let wasm = wat::parse_str(&text).expect("generated module parses");
                let options = PluginOptions {
                    limits: Limits { max_memory_bytes: 1 << 20, callback_deadline: Some(Duration::from_millis(50)), ..Limits::default() },
                    environment: vec![("K".into(), "V".into())],
                    ..PluginOptions::default()
                };
                let compiled = CompiledPlugin::new(engine.clone(), &wasm, options).expect("generated module loads");
                Target { compiled, funcs }
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&v, mut rest)) = data.split_first() else { return };
    let target = &targets()[usize::from(v) % 3];
    let Ok(mut plugin) = target.compiled.instantiate() else { return };
    let Ok(id) = plugin.http_stream() else { return };
    let headers = HeaderMap::from_pairs([(":path", "/fuzz"), ("x-key", "value")]);
    if plugin.request_headers(id, headers, false).is_err() {
        return;
    }
    let _ = plugin.request_body(id, b"body bytes", false);
    while let Some((&pick, tail)) = rest.split_first() {
        rest = tail;
        let f = target.funcs[usize::from(pick) % target.funcs.len()];
        let mut args = Vec::with_capacity(f.params.len());
        for p in f.params {
            let width = if *p == ValType::I64 { 8 } else { 4 };
            let mut word = [0u8; 8];
            let n = width.min(rest.len());
            word[..n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            args.push(if width == 4 { u64::from(u32::from_le_bytes([word[0], word[1], word[2], word[3]])) } else { u64::from_le_bytes(word) });
        }
        let index = target.funcs.iter().position(|g| std::ptr::eq(*g, f)).unwrap_or(0);
        let vm = plugin.vm().instance();
        let Some(export) = vm.lookup(&format!("c{index}")) else { return };
        if vm.call(export, &args).is_err() {
            return;
        }
    }
    let _ = plugin.finish(id);
});
