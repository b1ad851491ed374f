//! Finds V8 10.x (Debian's libnode108: headers in `include/node`, `libnode.so.108` exporting the
//! V8 C++ API), compiles the C++ bridge (`src/bridge.cc`) with the `cc` crate and links it.
//!
//! Search order, first match wins:
//! 1. `V8_INCLUDE_DIR` (the folder holding `v8.h`) and `V8_LIB_DIR` (holding `libnode.so.108`);
//! 2. system paths (`/usr/include/node` with `/usr/lib/<multiarch>`, then `/usr/local`), only
//!    when the headers there are V8 10.x: on a machine with nodejs 20, `/usr/include/node` is
//!    V8 11.3 and is skipped;
//! 3. the project's cache folder `<repo>/.cache/v8`, filled by `scripts/fetch-v8.sh`.
//!
//! Linking: this crate's own test binaries get `-Wl,--disable-new-dtags,-rpath,<libdir>`
//! (DT_RPATH, so libnode's own dependencies such as libuv also load from that folder). Link
//! arguments do not reach dependent crates, so the build script also puts symlinks to the
//! libraries in `OUT_DIR/lib` and adds that folder to the link search path: Cargo adds search
//! paths inside the target directory to `LD_LIBRARY_PATH` whenever it runs a test, bench or
//! binary of any package that depends on this one.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// The libnode shared object the bridge links against (its SONAME).
const LIBNODE: &str = "libnode.so.108";

struct V8 {
    include: PathBuf,
    lib: PathBuf,
    version: String,
    origin: &'static str,
}

fn main() {
    println!("cargo:rerun-if-changed=src/bridge.cc");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=V8_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=V8_LIB_DIR");

    let v8 = match find() {
        Ok(v8) => v8,
        Err(mut reasons) => {
            reasons.dedup();
            eprintln!("error: wasmux-v8 needs V8 10.x from Debian's libnode108 (headers and {LIBNODE}).");
            for reason in reasons {
                eprintln!("  - {reason}");
            }
            eprintln!("Get it with `scripts/fetch-v8.sh` (unpacks libnode108 and libnode-dev into .cache/v8),");
            eprintln!("or set V8_INCLUDE_DIR (the folder with v8.h) and V8_LIB_DIR (the folder with {LIBNODE}).");
            std::process::exit(1);
        }
    };
    println!("cargo:rerun-if-changed={}", v8.include.join("v8-version.h").display());
    println!("cargo:rerun-if-changed={}", v8.lib.join(LIBNODE).display());
    println!("cargo:rustc-env=WASMUX_V8_VERSION={}", v8.version);
    println!("cargo:rustc-env=WASMUX_V8_ORIGIN={}", v8.origin);

    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("src/bridge.cc")
        // The V8 headers are not ours to warn about.
        .flag("-isystem")
        .flag(v8.include.as_os_str())
        // V8 is built without RTTI; the bridge needs none either.
        .flag("-fno-rtti")
        .flag_if_supported("-Wno-unused-parameter")
        .compile("wasmux_v8_bridge");

    // libnode.so.108 has no unversioned `libnode.so` next to it on a system install.
    println!("cargo:rustc-link-search=native={}", v8.lib.display());
    println!("cargo:rustc-link-lib=dylib:+verbatim={LIBNODE}");
    println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags,-rpath,{}", v8.lib.display());
    if v8.origin != "system" {
        link_dir_for_dependents(&v8.lib);
    }
}

/// Symlinks the shared objects of `lib` into `OUT_DIR/lib` and adds that folder to the search
/// path, so `cargo test`/`cargo run` of dependent packages find them (see the module docs).
fn link_dir_for_dependents(lib: &Path) {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("lib");
    fs::create_dir_all(&out).expect("create OUT_DIR/lib");
    let entries = fs::read_dir(lib).unwrap_or_else(|e| panic!("read {}: {e}", lib.display()));
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().contains(".so") {
            continue;
        }
        let link = out.join(&name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(entry.path(), &link).unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
    }
    println!("cargo:rustc-link-search=native={}", out.display());
}

/// Tries every place in order; on failure, says why each was rejected.
fn find() -> Result<V8, Vec<String>> {
    let mut reasons = Vec::new();
    let include = env::var_os("V8_INCLUDE_DIR").map(PathBuf::from);
    let lib = env::var_os("V8_LIB_DIR").map(PathBuf::from);
    match (include, lib) {
        (Some(include), Some(lib)) => match check(&include, &lib, "env") {
            Ok(v8) => return Ok(v8),
            Err(e) => reasons.push(format!("V8_INCLUDE_DIR/V8_LIB_DIR: {e}")),
        },
        (None, None) => {}
        _ => reasons.push("V8_INCLUDE_DIR and V8_LIB_DIR must be set together".into()),
    }

    let multiarch = multiarch();
    for prefix in ["/usr", "/usr/local"] {
        let prefix = Path::new(prefix);
        let include = prefix.join("include/node");
        for lib in [prefix.join("lib").join(&multiarch), prefix.join("lib")] {
            match check(&include, &lib, "system") {
                Ok(v8) => return Ok(v8),
                Err(e) => reasons.push(format!("system: {e}")),
            }
        }
    }

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let repo = manifest.ancestors().nth(2).unwrap_or(&manifest).to_path_buf();
    let cache = repo.join(".cache/v8/usr");
    println!("cargo:rerun-if-changed={}", cache.display());
    match check(&cache.join("include/node"), &cache.join("lib").join(&multiarch), "cache") {
        Ok(v8) => return Ok(v8),
        Err(e) => reasons.push(format!("cache: {e}")),
    }
    Err(reasons)
}

/// Accepts `include` and `lib` if they hold V8 10.x headers and libnode.
fn check(include: &Path, lib: &Path, origin: &'static str) -> Result<V8, String> {
    let header = include.join("v8-version.h");
    let text = fs::read_to_string(&header).map_err(|e| format!("{}: {e}", header.display()))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("#define ")?.strip_prefix(name)?.trim().parse::<u32>().ok())
            .ok_or_else(|| format!("{}: no {name}", header.display()))
    };
    let (major, minor) = (field("V8_MAJOR_VERSION")?, field("V8_MINOR_VERSION")?);
    let (build, patch) = (field("V8_BUILD_NUMBER")?, field("V8_PATCH_LEVEL")?);
    if major != 10 {
        return Err(format!("{} is V8 {major}.{minor}, the bridge is written for V8 10.x", include.display()));
    }
    if !include.join("v8.h").is_file() {
        return Err(format!("{}: no v8.h", include.display()));
    }
    if !lib.join(LIBNODE).exists() {
        return Err(format!("{}: no {LIBNODE}", lib.display()));
    }
    Ok(V8 { include: include.into(), lib: lib.into(), version: format!("{major}.{minor}.{build}.{patch}"), origin })
}

/// The Debian multiarch triple of the target, e.g. `x86_64-linux-gnu`.
fn multiarch() -> String {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let env_ = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_else(|_| "gnu".into());
    format!("{arch}-linux-{env_}")
}
