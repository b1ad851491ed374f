#!/usr/bin/env bash
# Builds the conformance guest filters (conformance/fixtures/*) for the host target, as native
# shared libraries for the null engine:
#
#   conformance/fixtures/target/<host-triple>/release/libfixture_<name>.so
#
# Same sources and release profile as the committed .wasm modules (scripts/build-fixtures.sh);
# nothing here is committed. The conformance suite runs the SDK fixture cases on the null engine
# from these libraries, so run this before `cargo test -p wasmux-conformance --features null`
# (scripts/test.sh does).
#
# Usage: scripts/build-native-fixtures.sh
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fixtures="$repo/conformance/fixtures"
host="$(rustc -vV | sed -n 's/^host: //p')"

# An explicit --target keeps these artifacts (and their RUSTFLAGS) apart from the build scripts
# that the wasm builds compile for the host in target/release.
cd "$fixtures"
cargo build --locked --release --workspace --target "$host" --target-dir "$fixtures/target"
ls "$fixtures/target/$host/release/"libfixture_*.so
