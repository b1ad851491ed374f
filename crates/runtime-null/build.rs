//! The integration tests load native filter libraries, which bind their `proxy_*` imports to
//! this crate's symbols in the test executable: export them dynamically. The tests find the
//! fixtures under the target triple (`scripts/build-native-fixtures.sh`).

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo::rustc-link-arg-tests=-Wl,--export-dynamic-symbol=proxy_*");
    }
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo::rustc-env=WASMUX_NULL_TARGET={target}");
}
