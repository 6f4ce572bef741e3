#!/usr/bin/env bash
# The project's one test command:
#
#   sudo scripts/test.sh [cargo test args...]      e.g.  sudo scripts/test.sh -p banger-core -- --nocapture
#
# Runs, in order: fetch test assets, check Firecracker is installed, `cargo test --workspace --locked [args]`,
# `cargo fmt --check`, `cargo clippy -D warnings`. All three cargo steps run even when an earlier one fails, so one
# run reports every problem; the exit status is non-zero if any step failed.
#
# It runs as root because the tests do what banger does: create loop devices, mounts, bridges, tap devices and
# network namespaces, and run Firecracker. Tests that touch the network stay inside namespaces they create.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$script_dir")

die() {
    printf 'test.sh: error: %s\n' "$*" >&2
    exit 1
}

if ((EUID != 0)); then
    command -v sudo >/dev/null || die "the tests need root (loop devices, mounts, network namespaces, Firecracker);
rerun as root: sudo scripts/test.sh"
    printf 'test.sh: the tests need root; re-running under sudo\n' >&2
    # sudo resets the environment; keep the variables that change what or how we test.
    exec sudo --preserve-env=BANGER_TEST_ASSETS,CARGO_TARGET_DIR,CARGO_TERM_COLOR,CARGO_INCREMENTAL,RUST_LOG,RUST_BACKTRACE \
        -- bash "${BASH_SOURCE[0]}" "$@"
fi

# sudo resets PATH to secure_path, which has neither rustup's cargo nor Firecracker's default install location.
export PATH="${HOME:-/root}/.cargo/bin:/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:$PATH"
# Tests find the assets through this variable; export the default so test code and this script agree.
export BANGER_TEST_ASSETS=${BANGER_TEST_ASSETS:-/var/cache/banger-test}

cd "$repo"

command -v cargo >/dev/null || die "cargo not found (looked in PATH, ~/.cargo/bin, /root/.cargo/bin); run: sudo ./install.sh --deps-only"

bash "$script_dir/fetch-test-assets.sh"

# Test-only host tools: a real sshd (the SSH tests run one in a namespace standing in for a guest) and dig (the DNS
# tests query banger's server with a real resolver). install.sh leaves sshd out on purpose: users do not need an SSH
# server on their host.
missing=()
[[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
command -v dig >/dev/null || missing+=(bind9-dnsutils)
# tests/image_pull.rs runs a real OCI registry (Debian's docker-registry, on loopback with its own config) and
# pushes to it with skopeo.
[[ -x /usr/bin/docker-registry ]] || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
# What the real kernel and image builds need (tests/guest_build.rs, kernel_build, image_build); install.sh --deps-only
# installs them too. Checked by package, so a partial install is completed.
for p in linux-source-6.1 flex bison bc libelf-dev libssl-dev mmdebstrap gcc libc6-dev make; do
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) == ii* ]] || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
    printf 'test.sh: installing test-only packages: %s\n' "${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "cannot install ${missing[*]} (apt-get install ${missing[*]})"
    # The package starts a registry on :5000 for the host; the tests start their own.
    if [[ " ${missing[*]} " == *" docker-registry "* ]] && command -v systemctl >/dev/null; then
        systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
    fi
fi

command -v firecracker >/dev/null || die "firecracker is not on PATH; install it with: sudo scripts/install-firecracker.sh"
command -v jailer >/dev/null || die "jailer is not on PATH; install it with: sudo scripts/install-firecracker.sh"
printf 'test.sh: using %s (%s)\n' "$(command -v firecracker)" "$(firecracker --version 2>&1 | head -n 1)"

failed=()
# Runs one step, prints its duration, and records (rather than stops at) a failure.
step() {
    local name=$1 start rc=0
    shift
    start=$(date +%s)
    printf '\n=== test.sh: %s: %s\n' "$name" "$*"
    "$@" || rc=$?
    printf '=== test.sh: %s: %s after %ss\n' "$name" "$([[ $rc == 0 ]] && echo ok || echo "FAILED (exit $rc)")" \
        "$(($(date +%s) - start))"
    ((rc == 0)) || failed+=("$name")
}

step test cargo test --workspace --locked --no-fail-fast "$@"
step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets --locked -- -D warnings

if ((${#failed[@]} > 0)); then
    printf '\ntest.sh: FAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
printf '\ntest.sh: all steps passed\n'
