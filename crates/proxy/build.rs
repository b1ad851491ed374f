//! The test binary serves the SDK fixtures on the null engine when it is compiled in: export its
//! `proxy_*` host functions (see `wasmux_null::LINK_ARG`; nothing matches without it), and tell
//! the tests where `scripts/build-native-fixtures.sh` puts the libraries (under the target
//! triple).

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo::rustc-link-arg-tests=-Wl,--export-dynamic-symbol=proxy_*");
    }
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo::rustc-env=WASMUX_PROXY_TEST_TARGET={target}");
}
