#!/bin/bash
# Boots one lab host. lab.py runs it as PID 1 of fresh mount, UTS, IPC, network and PID
# namespaces (unshare). It builds the host's root file system, an overlayfs whose lower
# layer is this machine's / (read-only through the overlay: every write of the roles, in
# /etc, /var/lib, /usr/local, lands in the host's own upper directory), with its own /proc,
# /sys, /run, /tmp and /dev/shm, pivots into it and becomes the host's init: it reaps the
# services' processes until lab.py kills it, which ends every process of the host.
#
#   hostinit.sh NAME HOST_DIR SYSTEMCTL_STANDIN ETC_HOSTS
set -euo pipefail
name=$1 dir=$2 standin=$3 etc_hosts=$4
root=$dir/root

mount --make-rprivate /
hostname "$name"
mkdir -p "$dir/upper" "$dir/work" "$root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$dir/upper,workdir=$dir/work" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777,size=256m tmpfs "$root/dev/shm"
mount -t tmpfs -o mode=755,size=256m tmpfs "$root/run"
mount -t tmpfs -o mode=1777,size=1g tmpfs "$root/tmp"

echo "$name" > "$root/etc/hostname"
cp "$etc_hosts" "$root/etc/hosts"
# Services are supervised by the stand-in that reads the roles' systemd units (docs/lab.md);
# it shadows systemctl in this host's layer only.
install -m 0755 "$standin" "$root/usr/bin/systemctl"
# The machine's own Debian cluster is every host's starting point; nothing of it runs here.
rm -f "$root"/var/lib/postgresql/*/*/postmaster.pid

cd "$root"
mkdir -p .lab-oldroot
pivot_root . .lab-oldroot
cd /
touch "/.lab-oldroot$dir/ready"
umount -l /.lab-oldroot
rmdir /.lab-oldroot

# What boot would do before services: the run-time directories of tmpfiles.d
# (/run/postgresql, /run/sshd, ...).
systemd-tmpfiles --create >/dev/null 2>&1 || true

exec /usr/bin/python3 -c '
import os, signal, time
# PID 1 of the host: adopt and reap every orphan (daemons started by the stand-in).
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(1)
'
