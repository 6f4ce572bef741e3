#!/usr/bin/env bash
# One-command setup of banger on a Debian or Ubuntu host:
#
#   sudo ./install.sh [--deps-only] [--no-service] [--prefix DIR]
#
#   --deps-only    install host packages, Firecracker and check Rust; do not build or install banger
#   --no-service   do not install the bangerd systemd unit
#   --prefix DIR   install binaries into DIR/bin (default /usr/local)
#
# Every step checks before it acts (packages via dpkg-query, Firecracker via its hash, the group via getent, the build
# via cargo's own freshness check), so rerunning is safe, fast, and needs no network once everything is in place.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf '==> %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

deps_only=0
no_service=0
prefix=/usr/local
orig_args=("$@")
while (($# > 0)); do
    case $1 in
    --deps-only)
        deps_only=1
        shift
        ;;
    --no-service)
        no_service=1
        shift
        ;;
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
prefix=${prefix%/}
[[ -n $prefix ]] || die "--prefix must not be /"

# Root is needed for apt, for installing into PREFIX, for the group and the systemd unit.
if ((EUID != 0)); then
    command -v sudo >/dev/null || die "run this as root"
    log "re-running as root via sudo"
    exec sudo -- bash "${BASH_SOURCE[0]}" "${orig_args[@]}"
fi

cd "$script_dir"
# sudo resets PATH to secure_path: add where rustup and install-firecracker.sh put binaries.
export PATH="$prefix/bin:/usr/local/sbin:/usr/local/bin:$PATH"

started=$(date +%s)

# ---------------------------------------------------------------------------------------------------------------
# Host packages.
#   build tools:           build-essential pkg-config (the Rust build links C code: bundled SQLite, zstd, xz)
#   downloads:             curl ca-certificates (rustup, GitHub release), python3-pip (PyPI fallback for Firecracker)
#   what bangerd drives:   iproute2 nftables (bridge/tap/NAT), e2fsprogs xfsprogs btrfs-progs util-linux (images,
#                          loop devices, reflink), kmod (loading tun/kvm/loop modules), git (workspaces),
#                          openssh-client (guest access), lz4 zstd xz-utils (kernel and image decompression),
#                          bind9-dnsutils (dig: resolving <name>.vm by hand, and the DNS tests)
#   guest builds:          linux-source-6.1 flex bison bc libelf-dev libssl-dev (banger kernel build: Debian's kernel
#                          source and what its build needs; gcc/make come with build-essential), mmdebstrap
#                          (banger image build), libc6-dev (the static libc the banger-agent links against)
#   optional:              qemu-system-x86 (the QEMU backend; banger works without it)
# ---------------------------------------------------------------------------------------------------------------
required_pkgs=(build-essential pkg-config curl ca-certificates iproute2 nftables e2fsprogs xfsprogs btrfs-progs git
    openssh-client util-linux kmod lz4 zstd xz-utils bind9-dnsutils
    linux-source-6.1 flex bison bc libelf-dev libssl-dev mmdebstrap libc6-dev)
optional_pkgs=(qemu-system-x86)

# A pip that works is enough for the Firecracker fallback; only ask apt for one when there is none.
if ! { command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; }; then
    required_pkgs+=(python3-pip)
fi

is_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == ii* ]]
}

missing_of() {
    local p
    for p in "$@"; do
        is_installed "$p" || printf '%s\n' "$p"
    done
}

install_packages() {
    command -v apt-get >/dev/null || die "apt-get not found: install.sh supports Debian and Ubuntu only"
    local missing_req missing_opt
    mapfile -t missing_req < <(missing_of "${required_pkgs[@]}")
    mapfile -t missing_opt < <(missing_of "${optional_pkgs[@]}")
    if ((${#missing_req[@]} + ${#missing_opt[@]} == 0)); then
        log "host packages: all present"
        return 0
    fi
    log "host packages: installing ${missing_req[*]} ${missing_opt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Refresh the lists only when something must be installed, so a rerun on a complete host stays offline.
    apt-get update -q
    # --no-install-recommends keeps a server lean (qemu would otherwise pull in GUI and firmware packages).
    local apt_install=(apt-get install -y -q --no-install-recommends)
    if ((${#missing_req[@]} > 0)); then
        "${apt_install[@]}" "${missing_req[@]}" || die "apt-get install failed for: ${missing_req[*]}"
    fi
    if ((${#missing_opt[@]} > 0)); then
        "${apt_install[@]}" "${missing_opt[@]}" ||
            warn "optional packages not installed (${missing_opt[*]}); the QEMU backend will be unavailable"
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# Rust toolchain. Debian's own rustc is too old for this workspace, so only rustup (or an existing toolchain) will do.
# ---------------------------------------------------------------------------------------------------------------
required_rust=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml | head -n 1)
required_rust=${required_rust:-1.80}

find_cargo() {
    local d
    command -v cargo >/dev/null && return 0
    for d in "${HOME:-/root}/.cargo/bin" /root/.cargo/bin; do
        if [[ -x $d/cargo ]]; then
            export PATH="$d:$PATH"
            return 0
        fi
    done
    return 1
}

install_rustup() {
    local tmp rc=0
    tmp=$(mktemp)
    log "Rust: no cargo found; installing the stable toolchain with rustup"
    if curl --proto '=https' --tlsv1.2 --fail --silent --show-error --connect-timeout 10 -o "$tmp" https://sh.rustup.rs; then
        sh "$tmp" -y --no-modify-path --profile minimal --component rustfmt,clippy || rc=$?
    else
        rc=1
    fi
    rm -f "$tmp"
    return "$rc"
}

ensure_rust() {
    if ! find_cargo && ! { install_rustup && find_cargo; }; then
        die "no Rust toolchain found and rustup could not install one (is https://sh.rustup.rs reachable?).
Install Rust >= $required_rust for root (https://rustup.rs), make sure 'cargo' is in /root/.cargo/bin or on PATH,
then rerun ./install.sh."
    fi
    local have
    have=$(rustc --version 2>/dev/null | cut -d' ' -f2)
    [[ -n $have ]] || die "cargo is at $(command -v cargo) but rustc does not run"
    if [[ $(printf '%s\n%s\n' "$required_rust" "${have%%-*}" | sort -V | head -n 1) != "$required_rust" ]]; then
        die "rustc $have is too old; banger needs >= $required_rust (with rustup: rustup update stable)"
    fi
    log "Rust: $(cargo --version) at $(command -v cargo)"
    # fmt and clippy are needed only by scripts/test.sh, so a missing one is a warning, fixed when rustup can.
    local c
    for c in fmt clippy; do
        if ! cargo "$c" --version >/dev/null 2>&1; then
            local comp=$c
            [[ $c == fmt ]] && comp=rustfmt
            if command -v rustup >/dev/null && rustup component add "$comp"; then
                continue
            fi
            warn "cargo $c is missing; scripts/test.sh needs it (rustup component add $comp)"
        fi
    done
}

install_packages
ensure_rust
log "Firecracker"
bash "$script_dir/scripts/install-firecracker.sh" --prefix "$prefix"

if ((deps_only)); then
    log "dependencies ready in $(($(date +%s) - started))s (--deps-only: banger itself was not built)"
    exit 0
fi

# ---------------------------------------------------------------------------------------------------------------
# Build and install banger.
# ---------------------------------------------------------------------------------------------------------------
log "building banger (cargo build --release --locked)"
cargo build --release --locked
target_dir=${CARGO_TARGET_DIR:-$script_dir/target}
# The guest agent goes into every image banger builds: a static binary (the guest's libc is not the host's), built in
# its own target dir so the static RUSTFLAGS do not invalidate the main build. bangerd finds it next to itself.
agent_target=$target_dir/static-agent
log "building the static banger-agent (crt-static, x86_64-unknown-linux-gnu)"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$agent_target \
    cargo build --release --locked -p banger-agent --target x86_64-unknown-linux-gnu
install -d -m 0755 "$prefix/bin"
for bin in banger bangerd; do
    # install(1) unlinks the old file first, so this works while an old bangerd is running.
    install -m 0755 "$target_dir/release/$bin" "$prefix/bin/$bin"
done
install -m 0755 "$agent_target/x86_64-unknown-linux-gnu/release/banger-agent" "$prefix/bin/banger-agent"
log "installed $prefix/bin/banger, $prefix/bin/bangerd and $prefix/bin/banger-agent"

# Members of the banger group may talk to the daemon without sudo.
if getent group banger >/dev/null; then
    log "group banger: exists"
else
    groupadd --system banger
    log "group banger: created"
fi
# Group membership grants control over root-run VMs, so it is the admin's decision: say how, never do it silently.
if [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]] && ! id -nG "$SUDO_USER" 2>/dev/null | tr ' ' '\n' | grep -qx banger; then
    printf '\n    To use banger without sudo, add yourself to the banger group (then log in again):\n'
    printf '        sudo usermod -aG banger %s\n\n' "$SUDO_USER"
fi

if ((no_service)); then
    log "systemd unit: skipped (--no-service); start the daemon with: sudo bangerd &"
elif [[ -d /run/systemd/system ]]; then
    log "systemd unit: banger system install"
    "$prefix/bin/banger" system install
else
    log "systemd is not running here, so no service was installed. Start the daemon by hand: sudo bangerd &"
    log "(or run banger as root: it starts bangerd itself when none is running)"
fi

log "$("$prefix/bin/banger" version)"
log "done in $(($(date +%s) - started))s. Next steps: run 'banger --help' to see the commands; docs are in $script_dir/docs"
