#!/usr/bin/env bash
# A local stand-in for python:3.11.14-slim-bookworm, built from Debian packages only, for machines that
# cannot reach Docker Hub (.ci/images/build.sh calls this when the registry is unreachable).
#
#   standin-base.sh <rootfs-dir> [arch]   # writes a root filesystem; the caller imports it into buildah
#
# A foreign arch (arm64 on an amd64 machine) needs its binaries to run: build.sh calls this inside
# .ci/images/foreign-arch.sh (qemu-user through a binfmt_misc of its own user namespace). There debootstrap runs
# with container=lxc, so that it neither creates device nodes nor insists on mounting /proc and /sys.
#
# Same Debian release (bookworm) and Python minor (Debian's python3 is 3.11.x) as the official image;
# like it, `python` and `pip` are on PATH and the system Python carries no EXTERNALLY-MANAGED marker,
# so `pip install` into it works. No compiler: python3-pip's recommends (build-essential, python3-dev)
# are not installed. Everything here is an input of the image's cache key (build.sh hashes this file).
set -euo pipefail

rootfs=${1:?usage: standin-base.sh <rootfs-dir> [arch]}
ARCH=${2:-$(dpkg --print-architecture)}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,python3-pip,ca-certificates

rm -rf "$rootfs"
mkdir -p "$rootfs"
if [ "$ARCH" = "$(dpkg --print-architecture)" ]; then
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR"
else
  container=lxc debootstrap --arch="$ARCH" --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR"
  # no device nodes in a user namespace: the host's, bound in for the apt run below (apt-key writes /dev/null)
  for dev in null zero random urandom; do
    touch "$rootfs/dev/$dev"
    mount --bind "/dev/$dev" "$rootfs/dev/$dev"
  done
  trap 'for dev in null zero random urandom; do umount "$rootfs/dev/$dev" 2>/dev/null || true; done' EXIT
fi

# Security and point-release updates, as the official image's debian:bookworm-slim base has them.
cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
SOURCES
chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  sh -c 'apt-get update -qq && apt-get -y -qq -o Dpkg::Options::=--force-confold upgrade && apt-get clean'
for dev in null zero random urandom; do
  if mountpoint -q "$rootfs/dev/$dev"; then umount "$rootfs/dev/$dev"; fi
done

# What the official image offers on PATH: python and pip (it has them in /usr/local/bin).
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/pip"
# The official image's Python is not Debian's, so it has no PEP 668 marker; neither does this one.
rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED

# Slim, like debian:bookworm-slim: no package lists, docs, man pages or translations.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/usr/share/locale/* "$rootfs"/debootstrap
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs" -xdev -name __pycache__ -type d -prune -exec rm -rf {} +
# Device nodes are the runtime's business, not the image's.
rm -rf "${rootfs:?}"/dev/* "${rootfs:?}"/proc/* "${rootfs:?}"/sys/* "${rootfs:?}"/run/* "${rootfs:?}"/tmp/*
chroot "$rootfs" /usr/bin/python3 --version
