#!/usr/bin/env bash
# The real-guest end-to-end flow under Firecracker: what a maintainer runs on a host with hardware KVM.
#
#   sudo scripts/e2e-kvm.sh
#
# It is the same test CI runs under QEMU (tests/guest_e2e.rs: kernel + minimal image from Debian packages, vm create,
# SSH, vm health / vm ports through the guest agent, clean stop, start with the work disk kept, delete leaving
# nothing), with BANGER_E2E_VMM=firecracker. Before that it asks `banger doctor` whether Linux guests can boot under
# Firecracker on this host (check `vmm`: usable, hardware-backed KVM that is not nested paravirtual KVM). Where they
# cannot — CI's machines run nested PVM KVM, under which a Linux guest hangs in Firecracker — it says why and exits 77
# ("cannot run here"), never 0: nothing was tested.
#
# Exit status: 0 passed, 1 failed, 77 Firecracker cannot boot Linux guests on this host.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$script_dir")
cd "$repo"

if ((EUID != 0)); then
    exec sudo --preserve-env=BANGER_TEST_ASSETS,CARGO_TARGET_DIR -- bash "${BASH_SOURCE[0]}" "$@"
fi
export PATH="${HOME:-/root}/.cargo/bin:/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:$PATH"

command -v jq >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends jq >/dev/null

cargo build --locked --bin banger --bin bangerd
target=${CARGO_TARGET_DIR:-$repo/target}
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
# `doctor` never starts a daemon; with no daemon in this empty BANGER_HOME it runs the host checks itself. It exits 1
# when any check fails (device-mapper, say), which is not our question here.
verdict=$(BANGER_HOME=$home "$target/debug/banger" --json doctor 2>/dev/null || true)
detail=$(jq -r '.checks[] | select(.name == "vmm") | .detail' <<<"$verdict")
[[ -n $detail ]] || {
    echo "e2e-kvm: banger doctor gave no vmm check:" >&2
    echo "$verdict" >&2
    exit 1
}
case $detail in
"auto picks firecracker"*) ;;
*)
    echo "e2e-kvm: cannot run here: Firecracker cannot boot a Linux guest on this host."
    echo "e2e-kvm: doctor: $detail"
    echo "e2e-kvm: the same flow runs under QEMU in the test suite (tests/guest_e2e.rs)."
    exit 77
    ;;
esac

echo "e2e-kvm: doctor: $detail"
BANGER_E2E_VMM=firecracker cargo test --locked --test guest_e2e -- --nocapture
