#!/usr/bin/env bash
# The project's test command: formatting, lints, and every test in the workspace.
# Needs only the Rust toolchain: fixture modules are committed (scripts/build-fixtures.sh
# rebuilds them).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, all features, -D warnings)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "== cargo test"
cargo test --workspace --all-features

echo "== stress test, release build"
cargo test --release -p wasmux --test stress
