#!/usr/bin/env bash
# Installs the system packages the build and the tests need, from the distribution (Debian 12):
#
#   cmake         pingora-core's zlib-ng (libz-ng-sys) builds with it (wasmux-proxy, `wasmux serve`);
#                 so do WAMR's vendored C sources (wasmux-wamr, engine `wamr`, through wamrx-sys)
#   gcc           the C compiler CMake uses for WAMR and zlib-ng (usually there already)
#   libclang-dev  bindgen generates WAMR's Rust bindings at build time with libclang
#
# Idempotent: packages already installed are left alone, and nothing runs when all are there.
# Runs `apt-get update` once when the package lists are missing or stale (as root, or through
# sudo).
#
# Usage: scripts/install-deps.sh [PACKAGE...]   (extra packages, e.g. for scripts/load-bench.sh)
set -euo pipefail

packages=(cmake gcc libclang-dev "$@")

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
    echo "system packages are installed: ${packages[*]}"
    exit 0
fi

command -v apt-get >/dev/null || {
    echo "install-deps.sh: needs apt-get (Debian 12); install these by hand: ${missing[*]}" >&2
    exit 1
}
as_root() {
    if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi
}
export DEBIAN_FRONTEND=noninteractive
if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
    echo "== apt-get update (no package lists yet)"
    as_root apt-get update -q
fi
echo "== apt-get install ${missing[*]}"
if ! as_root apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    echo "== apt-get update (install failed), then retry"
    as_root apt-get update -q
    as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
