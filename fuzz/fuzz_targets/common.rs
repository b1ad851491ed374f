//! What the host-call fuzz targets share: a module per ABI version that imports every host
//! function of that version and exports a wrapper `c<i>` with the same signature, loaded
//! once per version.

use std::fmt::Write as _;
use std::sync::Arc;

use wasmux::abi::{AbiVersion, HOST_FUNCS, HostFunc, Limits, ValType};
use wasmux::{CompiledPlugin, HeaderMap, Plugin, PluginOptions, Runtime};

pub(crate) struct Target {
    pub(crate) compiled: Arc<CompiledPlugin>,
    pub(crate) funcs: Vec<&'static HostFunc>,
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

/// One loaded module per ABI version, with `limits`.
pub(crate) fn targets(limits: Limits) -> Vec<Target> {
    {
        let engine = Runtime::default().engine().expect("engine");
        AbiVersion::ALL
            .into_iter()
            .map(|v| {
                let (text, funcs) = module(v);
                let wasm = wat::parse_str(&text).expect("generated module parses");
                let options = PluginOptions {
                    limits: limits.clone(),
                    environment: vec![("K".into(), "V".into())],
                    ..PluginOptions::default()
                };
                let compiled = CompiledPlugin::new(engine.clone(), &wasm, options).expect("generated module loads");
                Target { compiled, funcs }
            })
            .collect()
    }
}


/// A fresh instance of a target with an HTTP stream past its request headers and a first body
/// chunk, as the effective context.
pub(crate) fn stream(target: &Target) -> Option<(Plugin, u32)> {
    let mut plugin = target.compiled.instantiate().ok()?;
    let id = plugin.http_stream().ok()?;
    let headers = HeaderMap::from_pairs([(":path", "/fuzz"), ("x-key", "value")]);
    plugin.request_headers(id, headers, false).ok()?;
    let _ = plugin.request_body(id, b"body bytes", false);
    Some((plugin, id))
}

/// Runs the (function, arguments) sequence of `input` through the wrappers; `after` runs after
/// each call. Stops at the first trap.
pub(crate) fn run_calls(target: &Target, plugin: &mut Plugin, mut input: &[u8], mut after: impl FnMut(&mut Plugin)) {
    while let Some((&pick, tail)) = input.split_first() {
        input = tail;
        let index = usize::from(pick) % target.funcs.len();
        let f = target.funcs[index];
        let mut args = Vec::with_capacity(f.params.len());
        for p in f.params {
            let width = if *p == ValType::I64 { 8 } else { 4 };
            let mut word = [0u8; 8];
            let n = width.min(input.len());
            word[..n].copy_from_slice(&input[..n]);
            input = &input[n..];
            args.push(if width == 4 { u64::from(u32::from_le_bytes([word[0], word[1], word[2], word[3]])) } else { u64::from_le_bytes(word) });
        }
        let vm = plugin.vm().instance();
        let Some(export) = vm.lookup(&format!("c{index}")) else { return };
        if vm.call(export, &args).is_err() {
            return;
        }
        after(plugin);
    }
}
