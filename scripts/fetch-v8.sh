#!/usr/bin/env bash
# Fetches V8 10.2 for the wasmux-v8 backend: Debian's libnode108 (Node 18, which exports the V8
# C++ API) and libnode-dev (its headers), unpacked — not installed — into .cache/v8, together
# with whichever of libnode's runtime libraries this machine lacks (libuv1 and libc-ares2 on a
# stock Debian 12 with nodejs 20).
#
# Why unpack: `apt-get install libnode108` conflicts with a nodejs package from another source,
# and /usr/include/node may belong to that other nodejs (a different V8). build.rs finds the
# folder by itself and links with an rpath into it.
#
# Idempotent: a complete folder is left alone. Needs apt-get and dpkg (Debian 12 / bookworm or a
# derivative with the same packages). Runs `apt-get update` once if the package lists are
# missing (as root, or through sudo).
#
# Usage: scripts/fetch-v8.sh [DEST]   (default: <repo>/.cache/v8)
set -euo pipefail
cd "$(dirname "$0")/.."

dest="${1:-$PWD/.cache/v8}"
packages=(libnode108 libnode-dev)
multiarch="$(gcc -print-multiarch 2>/dev/null || dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)"
libdir="$dest/usr/lib/$multiarch"
stamp="$dest/.complete"

# The libraries libnode needs that the loader cannot find, one soname a line.
missing_libs() {
    LD_LIBRARY_PATH="$libdir" ldd "$libdir/libnode.so.108" | awk '/not found/ { print $1 }'
}

if [[ -f "$stamp" && -f "$libdir/libnode.so.108" && -f "$dest/usr/include/node/v8.h" && -z "$(missing_libs)" ]]; then
    echo "V8 (libnode108) is ready in $dest"
    exit 0
fi

command -v apt-get >/dev/null && command -v dpkg >/dev/null || {
    echo "fetch-v8.sh: needs apt-get and dpkg (Debian 12). Otherwise set V8_INCLUDE_DIR and V8_LIB_DIR to a V8 10.x build." >&2
    exit 1
}

as_root() {
    if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi
}

# `apt-get download` needs the package lists; fetch them once.
updated=0
if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
    echo "== apt-get update (no package lists yet)"
    as_root apt-get update -q
    updated=1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# apt downloads as its sandbox user `_apt` when it can write there.
chmod 755 "$work"
if [[ "$(id -u)" == 0 ]] && id _apt >/dev/null 2>&1; then chown _apt "$work"; fi

fetch() {
    echo "== apt-get download $*"
    if ! (cd "$work" && apt-get download -q "$@"); then
        # Stale package lists name versions the mirror no longer has: refresh once and retry.
        ((updated)) && return 1
        echo "== apt-get update (download failed)"
        as_root apt-get update -q
        updated=1
        (cd "$work" && apt-get download -q "$@")
    fi
    for deb in "$work"/*.deb; do
        dpkg -x "$deb" "$dest"
        rm -f "$deb"
    done
}

mkdir -p "$dest"
fetch "${packages[@]}"

# libnode's shared-library dependencies that are not installed on this machine.
deps=()
while read -r dep; do
    [[ "$dep" == lib* || "$dep" == zlib* ]] || continue
    status="$(dpkg-query -W -f='${Status}' "$dep" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]] || deps+=("$dep")
done < <(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances libnode108 |
    awk '$1 == "Depends:" && $2 !~ /^</ { print $2 }')
if ((${#deps[@]})); then
    fetch "${deps[@]}"
fi

left="$(missing_libs)"
if [[ -n "$left" ]]; then
    echo "fetch-v8.sh: libnode.so.108 still misses: $left" >&2
    exit 1
fi
printf '%s\n' "${packages[@]}" "${deps[@]}" >"$stamp"
echo "V8 (libnode108) unpacked into $dest"
