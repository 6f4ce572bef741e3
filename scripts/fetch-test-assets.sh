#!/usr/bin/env bash
# Put the inputs the test suite needs into the test asset cache.
#
#   scripts/fetch-test-assets.sh          (cache: /var/cache/banger-test, override with BANGER_TEST_ASSETS)
#
# Assets:
#   vmlinuz-cloud-amd64         Debian's cloud kernel (a bzImage with an LZ4 payload). Tests use it as a real-world
#                               kernel image to parse, e.g. for bzImage -> vmlinux extraction.
#   vmlinuz-cloud-amd64.source  the Debian package it came from (one line: the package name).
#
# Everything comes from the Debian archive through apt, since package registries are the only network these
# machines have. Each asset is skipped when already present, so reruns are instant and offline.
set -euo pipefail

assets=${BANGER_TEST_ASSETS:-/var/cache/banger-test}
readonly KERNEL="$assets/vmlinuz-cloud-amd64"
# Only the unsigned flavour: the signed package wraps the same image in a signature template package.
readonly KERNEL_PKG_RE='^linux-image-[0-9.]+-[0-9]+-cloud-amd64-unsigned$'

log() { printf 'fetch-test-assets: %s\n' "$*"; }
die() {
    printf 'fetch-test-assets: error: %s\n' "$*" >&2
    exit 1
}

# Prints the newest cloud kernel package name known to apt, or nothing.
newest_kernel_pkg() {
    apt-cache search --names-only "$KERNEL_PKG_RE" | cut -d' ' -f1 | sort -V | tail -n 1
}

fetch_kernel() {
    if [[ -s $KERNEL && -s $KERNEL.source ]]; then
        log "present: $KERNEL ($(<"$KERNEL.source"))"
        return 0
    fi
    command -v apt-get >/dev/null || die "apt-get not found: $KERNEL must be fetched from a Debian/Ubuntu archive"

    local pkg
    pkg=$(newest_kernel_pkg)
    if [[ -z $pkg ]]; then
        # A fresh machine may have empty package lists; refresh once (root only) before giving up.
        if ((EUID == 0)); then
            log "no cloud kernel package known to apt; running apt-get update"
            apt-get update -q >/dev/null
            pkg=$(newest_kernel_pkg)
        fi
        [[ -n $pkg ]] || die "apt-cache knows no package matching $KERNEL_PKG_RE (run apt-get update as root?)"
    fi

    local deb
    deb=$(find "$assets" -maxdepth 1 -name "${pkg}_*.deb" -print -quit)
    if [[ -z $deb ]]; then
        log "downloading $pkg"
        # apt-get download writes into the current directory; a subshell keeps our cwd. As root, apt would drop to
        # the _apt user, which cannot write into a root-owned cache, and warn; downloading as root directly is what
        # it falls back to anyway.
        local sandbox=()
        ((EUID == 0)) && sandbox=(-o APT::Sandbox::User=root)
        (cd "$assets" && apt-get download -q "${sandbox[@]}" "$pkg")
        deb=$(find "$assets" -maxdepth 1 -name "${pkg}_*.deb" -print -quit)
        [[ -n $deb ]] || die "apt-get download $pkg left no .deb in $assets"
    else
        log "using cached $deb"
    fi

    local tmp
    tmp=$(mktemp -d)
    # Extract only what is needed; the rest (modules) is ~80% of the package and would just be deleted.
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './boot/vmlinuz-*'
    local images=("$tmp"/boot/vmlinuz-*)
    if ((${#images[@]} != 1)) || [[ ! -s ${images[0]} ]]; then
        rm -rf "$tmp"
        die "$deb does not contain exactly one boot/vmlinuz-*"
    fi
    # Copy under a temporary name and rename, so an interrupted run never leaves a truncated kernel behind that a
    # later run would treat as present. The .source file is written last: it marks the asset complete.
    cp "${images[0]}" "$KERNEL.part"
    mv -f "$KERNEL.part" "$KERNEL"
    printf '%s\n' "$pkg" >"$KERNEL.source.part"
    mv -f "$KERNEL.source.part" "$KERNEL.source"
    rm -rf "$tmp"
    log "fetched $KERNEL from $pkg ($(stat -c %s "$KERNEL") bytes)"
}

mkdir -p "$assets"
fetch_kernel
