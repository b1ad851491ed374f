#!/usr/bin/env bash
# Builds the conformance guest filters (conformance/fixtures/*, their own cargo workspace) for
# wasm32-wasip1 and wasm32-unknown-unknown and copies the modules into conformance/fixtures/wasm/:
#
#   <name>.wasip1.wasm    <name>.unknown.wasm    SHA256SUMS
#
# where <name> is the crate's directory (headers, body, ..., headers-v010, ...). The .wasm files
# are committed, so the tests need no wasm toolchain; rerun this after changing a filter.
#
# Usage: scripts/build-fixtures.sh [--check]
#   --check   build, then compare against the committed SHA256SUMS instead of copying
#             (exit 1 if a committed module is stale). Needs the same toolchain (Rust 1.95).
set -euo pipefail

check=false
case "${1:-}" in
    "") ;;
    --check) check=true ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fixtures="$repo/conformance/fixtures"
out="$fixtures/wasm"
target_dir="$fixtures/target"
targets=(wasm32-wasip1 wasm32-unknown-unknown)

if command -v rustup >/dev/null 2>&1; then
    rustup target add "${targets[@]}" >/dev/null
fi

# Reproducible bytes: the SDK's panic locations would otherwise embed this machine's cargo home.
# (The fixture crates are compiled with workspace-relative paths, std with /rustc/<hash>/.)
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
unset RUSTFLAGS
export CARGO_ENCODED_RUSTFLAGS="--remap-path-prefix=$cargo_home/registry/src=/cargo/registry/src"

# Every directory with a Cargo.toml is one filter crate, package `fixture-<dir>`.
crates=()
for manifest in "$fixtures"/*/Cargo.toml; do
    crates+=("$(basename "$(dirname "$manifest")")")
done

# `--workspace` means the workspace around the cwd: the fixtures one, not the host's.
cd "$fixtures"
target_args=()
for target in "${targets[@]}"; do
    target_args+=(--target "$target")
done
cargo build --locked --release --workspace "${target_args[@]}" --target-dir "$target_dir"

staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT
for crate in "${crates[@]}"; do
    artifact="fixture_${crate//-/_}.wasm"
    cp "$target_dir/wasm32-wasip1/release/$artifact" "$staging/$crate.wasip1.wasm"
    cp "$target_dir/wasm32-unknown-unknown/release/$artifact" "$staging/$crate.unknown.wasm"
done
(cd "$staging" && LC_ALL=C sha256sum -- *.wasm | LC_ALL=C sort -k2 > SHA256SUMS)

if $check; then
    if diff -u "$out/SHA256SUMS" "$staging/SHA256SUMS"; then
        echo "fixtures up to date"
    else
        echo "committed fixtures differ from a fresh build; run scripts/build-fixtures.sh" >&2
        exit 1
    fi
    exit 0
fi

mkdir -p "$out"
rm -f "$out"/*.wasm "$out/SHA256SUMS"
cp "$staging"/*.wasm "$staging/SHA256SUMS" "$out/"
cat "$out/SHA256SUMS"
