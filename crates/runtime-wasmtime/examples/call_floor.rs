//! What wasmtime itself costs for the crossings a proxy-wasm host call makes, without wasmux:
//! the floor under `wasmux bench`'s `host_call` and `empty_callback` figures.
//!
//! The guest loops over an imported function; the host side is plain `Linker::func_wrap` code
//! on raw memory slices (no bounds policy, no ABI table, no state):
//!
//! - `wasm -> host`: the import returns a constant.
//! - `wasm -> host -> wasm malloc`: the import calls the guest's `malloc` export (a constant).
//! - `get_header_map_value, minimal`: the import reads a 5-byte key, calls `malloc`, copies an
//!   11-byte value and writes the two out-words, as `proxy_get_header_map_value` must.
//! - `host -> wasm`: a top-level typed call of an export that returns its argument.
//!
//! `cargo run --release -p wasmux-wasmtime --example call_floor`

use std::time::Instant;

use wasmtime::{Caller, Config, Engine, Linker, Memory, Module, Result, Store, TypedFunc};

struct Data {
    malloc: Option<TypedFunc<i32, i32>>,
    memory: Option<Memory>,
}

const ITERS: i32 = 5_000_000;

fn main() -> Result<()> {
    let mut config = Config::new();
    // As wasmux runs it: epoch interruption on.
    config.epoch_interruption(true);
    let engine = Engine::new(&config)?;
    let loop_over = |name: &str, import: &str| {
        format!(
            r#"(func (export "{name}") (param $n i32) (result i32) (local $acc i32)
                 (block $done (loop $l (br_if $done (i32.eqz (local.get $n)))
                   (local.set $acc (i32.add (local.get $acc)
                     (call ${import} (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 64) (i32.const 72))))
                   (local.set $n (i32.sub (local.get $n) (i32.const 1))) (br $l)))
                 (local.get $acc))"#
        )
    };
    let wat = format!(
        r#"(module
             (import "env" "constant" (func $constant (param i32 i32 i32 i32 i32) (result i32)))
             (import "env" "malloc" (func $malloc (param i32 i32 i32 i32 i32) (result i32)))
             (import "env" "get" (func $get (param i32 i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (data (i32.const 16) "x-key")
             (func (export "malloc") (param i32) (result i32) (i32.const 4096))
             {} {} {})"#,
        loop_over("loop_constant", "constant"),
        loop_over("loop_malloc", "malloc"),
        loop_over("loop_get", "get"),
    );
    let module = Module::new(&engine, wat)?;
    let mut linker = Linker::<Data>::new(&engine);
    linker.func_wrap("env", "constant", |_: Caller<'_, Data>, _: i32, _: i32, _: i32, _: i32, _: i32| 0)?;
    linker.func_wrap("env", "malloc", |mut cx: Caller<'_, Data>, _: i32, _: i32, _: i32, _: i32, _: i32| {
        let malloc = cx.data().malloc.clone().expect("malloc resolved");
        malloc.call(&mut cx, 11)
    })?;
    linker.func_wrap(
        "env",
        "get",
        |mut cx: Caller<'_, Data>, _map: i32, key: i32, key_len: i32, out: i32, out_len: i32| {
            let memory = cx.data().memory.expect("memory resolved");
            let mut name = [0u8; 64];
            let (key, key_len) = (key as usize, key_len as usize);
            name[..key_len].copy_from_slice(&memory.data(&cx)[key..key + key_len]);
            let malloc = cx.data().malloc.clone().expect("malloc resolved");
            let ptr = malloc.call(&mut cx, 11)?;
            let mem = memory.data_mut(&mut cx);
            let (p, o, l) = (ptr as usize, out as usize, out_len as usize);
            mem[p..p + 11].copy_from_slice(b"small-value");
            mem[o..o + 4].copy_from_slice(&ptr.to_le_bytes());
            mem[l..l + 4].copy_from_slice(&11i32.to_le_bytes());
            Ok(i32::from(name[0] == 0))
        },
    )?;
    let mut store = Store::new(&engine, Data { malloc: None, memory: None });
    store.set_epoch_deadline(u64::MAX / 2);
    let instance = linker.instantiate(&mut store, &module)?;
    let malloc = instance.get_typed_func::<i32, i32>(&mut store, "malloc")?;
    store.data_mut().malloc = Some(malloc.clone());
    store.data_mut().memory = instance.get_memory(&mut store, "memory");

    for (label, export) in [
        ("wasm -> host", "loop_constant"),
        ("wasm -> host -> wasm malloc", "loop_malloc"),
        ("get_header_map_value, minimal", "loop_get"),
    ] {
        let f = instance.get_typed_func::<i32, i32>(&mut store, export)?;
        f.call(&mut store, 100_000)?;
        let start = Instant::now();
        f.call(&mut store, ITERS)?;
        println!("{label:<32} {:6.1} ns", start.elapsed().as_nanos() as f64 / f64::from(ITERS));
    }
    for _ in 0..100_000 {
        malloc.call(&mut store, 1)?;
    }
    let start = Instant::now();
    for _ in 0..ITERS {
        malloc.call(&mut store, 1)?;
    }
    println!("{:<32} {:6.1} ns", "host -> wasm", start.elapsed().as_nanos() as f64 / f64::from(ITERS));
    Ok(())
}
