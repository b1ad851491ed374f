//! Exports the null engine's `proxy_*` host functions from the `wasmux` binary, so that native
//! filter libraries loaded with `--engine null` bind to them (see `wasmux_null::LINK_ARG`).
//! Harmless when the null engine is not compiled in: nothing matches.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo::rustc-link-arg-bins=-Wl,--export-dynamic-symbol=proxy_*");
    }
}
