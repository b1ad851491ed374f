//! Host functions called with arbitrary arguments against a live instance.
//!
//! For each ABI version a module imports every host function of that version (and every WASI
//! function) and exports a wrapper `c<i>` with the same signature. The input picks a version,
//! then a sequence of (function, arguments); each input gets a fresh instance with an HTTP
//! stream as the effective context. Any status or trap is fine; a host panic is a bug.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use wasmux::abi::Limits;

fn targets() -> &'static [common::Target] {
    static T: OnceLock<Vec<common::Target>> = OnceLock::new();
    T.get_or_init(|| {
        common::targets(Limits {
            max_memory_bytes: 1 << 20,
            callback_deadline: Some(Duration::from_millis(50)),
            ..Limits::default()
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&v, rest)) = data.split_first() else { return };
    let target = &targets()[usize::from(v) % 3];
    let Some((mut plugin, id)) = common::stream(target) else { return };
    common::run_calls(target, &mut plugin, rest, |_| {});
    let _ = plugin.finish(id);
});
