//! Benches that run the null engine load native filter libraries, which bind to its `proxy_*`
//! host functions in the executable: export them (see `wasmux_null::LINK_ARG`). Harmless when
//! the null engine is not compiled in: nothing matches.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo::rustc-link-arg-benches=-Wl,--export-dynamic-symbol=proxy_*");
    }
    // The target the native fixtures are built for (scripts/build-native-fixtures.sh).
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo::rustc-env=WASMUX_TARGET={target}");
}
