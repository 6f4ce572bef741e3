#!/usr/bin/env bash
# Proves that a kernel built by `banger kernel build` boots: under QEMU with TCG (software emulation, so it works
# without usable KVM), on the microvm machine (virtio-mmio only, like Firecracker), with no modules and no initramfs.
#
#   scripts/boot-test-kernel.sh KERNEL          # an ELF vmlinux with the PVH note (CONFIG_PVH=y)
#
# It makes a tiny ext4 root (mkfs.ext4 -d) holding a static /init that checks /proc, /sys and the kernel-mounted
# devtmpfs, that an AF_VSOCK socket can be created and that a virtio-serial port appeared, prints
# "banger-kernel-ok <uname -r>" on the console and powers off. The test passes when that line appears and QEMU exits
# by itself within the timeout. Needs gcc (with static glibc), e2fsprogs, qemu-system-x86. Exit status: 0 pass,
# 1 fail, 2 usage.
set -euo pipefail

TIMEOUT_SECS=${BOOT_TEST_TIMEOUT:-60}
PATH=$PATH:/usr/sbin:/sbin

die() {
    echo "boot-test-kernel: $*" >&2
    exit 1
}

if [[ $# -ne 1 || $1 == -h || $1 == --help ]]; then
    echo "usage: $0 KERNEL" >&2
    exit 2
fi
kernel=$1
[[ -f $kernel ]] || die "$kernel: no such file"
for tool in gcc mkfs.ext4 qemu-system-x86_64 timeout; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install gcc libc6-dev e2fsprogs qemu-system-x86)"
done

tmp=$(mktemp -d -t banger-boot-test.XXXXXX)
cleanup() {
    rm -rf "$tmp"
}
trap cleanup EXIT

cat >"$tmp/init.c" <<'EOF'
/* /init for banger's kernel boot test: check, report on the console, power off. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static FILE *con;
static int failures;

static void check(const char *what, int ok, const char *detail) {
    fprintf(con, "banger-check %s: %s%s%s\n", what, ok ? "ok" : "FAILED", detail ? " " : "", detail ? detail : "");
    if (!ok)
        failures++;
}

static int readable(const char *path) {
    char buf[64];
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    return n > 0;
}

/* A virtio-serial port: /sys/class/virtio-ports/vportNpM, and its /dev node. */
static void check_virtio_serial(void) {
    char detail[160] = "no port in /sys/class/virtio-ports";
    int ok = 0;
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (strncmp(e->d_name, "vport", 5) != 0)
            continue;
        char dev[96], name_path[160], name[64] = "";
        snprintf(dev, sizeof dev, "/dev/%s", e->d_name);
        snprintf(name_path, sizeof name_path, "/sys/class/virtio-ports/%s/name", e->d_name);
        int fd = open(name_path, O_RDONLY);
        if (fd >= 0) {
            ssize_t n = read(fd, name, sizeof name - 1);
            name[n > 0 ? n : 0] = 0;
            name[strcspn(name, "\n")] = 0;
            close(fd);
        }
        int port = open(dev, O_RDWR | O_NONBLOCK);
        ok = port >= 0;
        snprintf(detail, sizeof detail, "%s (name %s)%s%s", dev, name, ok ? "" : ": ", ok ? "" : strerror(errno));
        if (port >= 0)
            close(port);
        break;
    }
    if (d)
        closedir(d);
    check("virtio-serial port", ok, detail);
}

int main(void) {
    con = fopen("/dev/console", "w");
    if (!con)
        con = stdout;
    setvbuf(con, NULL, _IONBF, 0);

    struct stat st;
    /* CONFIG_DEVTMPFS_MOUNT: the kernel mounted /dev before running us. */
    check("devtmpfs", stat("/dev/null", &st) == 0 && S_ISCHR(st.st_mode), "/dev/null");
    check("proc", mount("proc", "/proc", "proc", 0, NULL) == 0 && readable("/proc/self/stat"), NULL);
    check("sysfs", mount("sysfs", "/sys", "sysfs", 0, NULL) == 0 && stat("/sys/kernel", &st) == 0, NULL);
    check("tmpfs", mount("tmpfs", "/tmp", "tmpfs", 0, "size=1m") == 0, NULL);

    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    check("vsock socket", s >= 0, s >= 0 ? NULL : strerror(errno));
    if (s >= 0)
        close(s);
    check_virtio_serial();

    struct utsname u;
    uname(&u);
    if (failures == 0)
        fprintf(con, "banger-kernel-ok %s\n", u.release);
    else
        fprintf(con, "banger-kernel-FAILED %s: %d check(s) failed\n", u.release, failures);
    sync();
    /* Without ACPI (microvm,acpi=off) there is no power-off device: the kernel
     * halts, init exits, the kernel panics, panic=-1 reboots at once and
     * reboot=t triple-faults, which QEMU (-no-reboot) turns into an exit. */
    reboot(RB_POWER_OFF);
    return 1;
}
EOF

gcc -static -Os -o "$tmp/init" "$tmp/init.c" || die "cannot compile /init (static glibc: libc6-dev)"
mkdir -p "$tmp/root/dev" "$tmp/root/proc" "$tmp/root/sys" "$tmp/root/tmp"
install -m 0755 "$tmp/init" "$tmp/root/init"
mkfs.ext4 -q -F -L banger-boot-test -d "$tmp/root" "$tmp/root.ext4" 16M || die "mkfs.ext4 failed"

echo "booting $kernel under QEMU TCG (timeout ${TIMEOUT_SECS}s)..."
start=$(date +%s.%N)
rc=0
timeout --kill-after=5 "$TIMEOUT_SECS" qemu-system-x86_64 \
    -M microvm,acpi=off -accel tcg -cpu max -m 256 \
    -nodefaults -no-user-config -nographic -serial stdio \
    -kernel "$kernel" \
    -append "console=ttyS0 root=/dev/vda rw init=/init panic=-1 reboot=t" \
    -drive id=r,file="$tmp/root.ext4",format=raw,if=none -device virtio-blk-device,drive=r \
    -device virtio-serial-device -chardev null,id=agent -device virtserialport,chardev=agent,name=org.banger.agent \
    -no-reboot </dev/null >"$tmp/console.log" 2>&1 || rc=$?
elapsed=$(echo "$(date +%s.%N) - $start" | bc)

console=$(tr -d '\r' <"$tmp/console.log")
grep '^banger-' <<<"$console" || true
ok_line=$(grep -m1 '^banger-kernel-ok ' <<<"$console" || true)
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    echo "--- console ---"
    tail -n 40 <<<"$console"
    die "QEMU did not exit within ${TIMEOUT_SECS}s (power off did not work, or the guest hung)"
fi
if [[ -z $ok_line ]]; then
    echo "--- console ---"
    tail -n 60 <<<"$console"
    die "no banger-kernel-ok line (QEMU exit status $rc)"
fi
if [[ $rc -ne 0 ]]; then
    echo "--- console ---"
    tail -n 20 <<<"$console"
    die "QEMU exited with status $rc"
fi
printf 'PASS: %s booted (%s), QEMU exited by itself after %.1fs\n' "$kernel" "${ok_line#banger-kernel-ok }" "$elapsed"
