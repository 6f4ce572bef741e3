#!/bin/bash
# The root disk's cost by image size, copy vs auto (overlay on ext4), in one run:
#
#   sudo COUNT=9 scripts/bench-disk-root.sh      (after `cargo build`; root: it runs a daemon)
#
# Registers two images on the stub kernel with the overlay feature — 32 MiB and 1.2 GiB ext4 filesystems full of
# random data (not sparse, so a copy copies) — and runs `banger bench create --image I --count COUNT` for each under
# `[vm] disk_backend = "copy"`, then `"auto"`; prints the median `disk-root` stage and which backend a VM got. The
# daemon runs in a network namespace of its own (removed at the end); everything lives under /tmp/ovbench-*.
set -euo pipefail
W=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
B=$W/target/debug/banger; D=$W/target/debug/bangerd
H=/tmp/ovbench-home; NS=ovbench
COUNT=${COUNT:-7}
rm -rf $H /tmp/ovbench-data; mkdir -p $H /tmp/ovbench-data
ip netns add $NS 2>/dev/null || true
ip -n $NS link set lo up
export BANGER_HOME=$H HOME=$H/user-home
mkdir -p $HOME
DPID=
start() {
  printf '[daemon]\nsocket_group = "nogroup"\n\n[vm]\nvmm = "firecracker"\ndisk_backend = "%s"\n\n[network]\ndns_listen = "127.0.0.1:0"\n' "$1" > $H/config.toml
  ip netns exec $NS $D --home $H >/dev/null 2>$H/daemon.err & DPID=$!
  for i in $(seq 200); do [ -S $H/run/bangerd.sock ] || [ -S $H/bangerd.sock ] && break; sleep 0.05; done
  sleep 0.5
}
stop() { kill $DPID; wait $DPID || true; }
trap 'kill $DPID 2>/dev/null || true; ip netns del $NS 2>/dev/null || true; rm -rf /tmp/ovbench-data $H' EXIT
# images: 32 MiB and 1.2 GiB, full of data
mk() { # name MiB-of-data fs-size
  mkdir -p /tmp/ovbench-data/$1; head -c $(( $2 << 20 )) /dev/urandom > /tmp/ovbench-data/$1/blob
  mkfs.ext4 -q -F -d /tmp/ovbench-data/$1 /tmp/ovbench-data/$1.ext4 $3
}
mk small 20 32M; mk big 1100 1200M
ls -ls /tmp/ovbench-data/*.ext4
start auto
$B bench create --count 1 >/dev/null   # registers bench-stub
for n in small big; do $B image register --name $n --rootfs /tmp/ovbench-data/$n.ext4 --kernel bench-stub --features agent,overlay >/dev/null; done
$B --json image list | python3 -c 'import json,sys; [print(i["name"], i["rootfs"]["size"], i["features"]) for i in json.load(sys.stdin)]'
stop
for backend in copy auto; do
  start $backend
  for n in small big; do
    echo "== $backend $n"
    $B bench create --image $n --count $COUNT 2>&1 | grep -E "disk-root|total|backend" || $B bench create --image $n --count 1
    $B --json vm create --name probe-$n --image $n --no-start | python3 -c 'import json,sys; v=json.load(sys.stdin)["vm"]; print("backend", v["root_disk"]["backend"], v["root_disk"].get("note"))'
    $B vm delete probe-$n >/dev/null
  done
  stop
done
