//! Link settings for the `wasmux` binary:
//!
//! - exports the null engine's `proxy_*` host functions, so that native filter libraries loaded
//!   with `--engine null` bind to them (see `wasmux_null::LINK_ARG`); harmless when the null
//!   engine is not compiled in: nothing matches;
//! - with the `v8` feature, an rpath (DT_RPATH, so libnode's own dependencies resolve there too)
//!   to the V8 library folder (`V8_LIB_DIR`, else the project cache that `scripts/fetch-v8.sh`
//!   fills), so the binary runs outside cargo. A system-wide libnode needs none.

use std::path::PathBuf;

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo::rustc-link-arg-bins=-Wl,--export-dynamic-symbol=proxy_*");
    }
    println!("cargo::rerun-if-env-changed=V8_LIB_DIR");
    if std::env::var_os("CARGO_FEATURE_V8").is_some() {
        let dir = std::env::var_os("V8_LIB_DIR").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/v8/usr/lib/x86_64-linux-gnu")
        });
        if let Ok(dir) = dir.canonicalize()
            && dir.join("libnode.so.108").exists()
        {
            println!("cargo::rustc-link-arg-bins=-Wl,--disable-new-dtags,-rpath,{}", dir.display());
        }
    }
}
