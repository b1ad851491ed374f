#!/usr/bin/env bash
# The project's test command: formatting, lints, and every test in the workspace.
# Needs the Rust toolchain, and apt-get/dpkg for system packages and the V8 library
# (scripts/install-deps.sh and scripts/fetch-v8.sh, run below), and rustup for the wasm32-wasip1
# target examples/filter builds itself for. Fixture modules are committed (scripts/build-fixtures.sh rebuilds them).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== system packages (cmake for pingora's zlib-ng and WAMR, libclang-dev for WAMR's bindings): scripts/install-deps.sh"
scripts/install-deps.sh

echo "== V8 for the v8 engine (--all-features builds it): scripts/fetch-v8.sh"
scripts/fetch-v8.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, all features, -D warnings)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "== cargo clippy (libraries and binaries: no unwrap() reachable from user or guest input)"
cargo clippy --workspace --lib --bins --all-features -- -D warnings -D clippy::unwrap_used

echo "== the wasm32-wasip1 target: examples/filter builds itself for it in its self-test"
rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

echo "== native fixtures for the null engine: scripts/build-native-fixtures.sh"
scripts/build-native-fixtures.sh

echo "== cargo test"
cargo test --workspace --all-features
