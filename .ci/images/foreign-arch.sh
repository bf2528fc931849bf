#!/usr/bin/env bash
# foreign-arch.sh ARCH CMD...: run CMD as root of a new user + mount namespace (uids/gids 0-65535 mapped to
# themselves, so files keep their owners) in which the kernel runs ARCH's ELF binaries through qemu-user: Debian's
# qemu-user 10.0 (bookworm-backports), a static binary `make` unpacks to .tools/bin/qemu-aarch64 (TSR_QEMU_AARCH64
# overrides it). Bookworm's own qemu-user-static 7.2 runs Python and pip, but `import torch` segfaults under it
# (oneDNN's CPU detection, which cannot read the host's MIDR_EL1); under 10.0 that is a warning. The registration lives in a binfmt_misc mounted inside that user namespace (kernel >= 6.7),
# with flag F (the interpreter is opened at registration, so it works inside chroots and build containers too):
# the host's binfmt_misc is neither mounted nor changed. Used by build.sh for PLATFORMS=linux/arm64 and by
# `make arm64-smoke`. Needs root (to write the id maps).
set -euo pipefail
# foreign-arch.sh --binfmt ARCH: print the registration line alone (the node of tests/cluster_node.py registers
# it in an arm64 node's own user namespace), after checking that the interpreter exists.
binfmt() {
  local arch=$1 qemu magic mask
  case $arch in
    arm64)
      qemu=${TSR_QEMU_AARCH64:-$(cd "$(dirname "$0")/../.." && pwd)/.tools/bin/qemu-aarch64}
      magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
      mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
      ;;
    *) echo "error: foreign-arch.sh: no emulation set up for $arch (only arm64)" >&2; return 1 ;;
  esac
  [ -x "$qemu" ] || { echo "error: $qemu not found (make arm64-smoke / images-local PLATFORMS=linux/arm64 unpacks it; or set TSR_QEMU_AARCH64)" >&2; return 1; }
  printf '%s' ":tsr-$arch:M::$magic:$mask:$qemu:F"  # the kernel decodes the \x.. escapes
}
if [ "${1:-}" = "--binfmt" ]; then
  binfmt "${2:?usage: foreign-arch.sh --binfmt ARCH}"
  exit
fi
arch=${1:?usage: foreign-arch.sh ARCH CMD...}
shift
registration=$(binfmt "$arch")

if [ "${TSR_FOREIGN_ARCH:-}" = "$arch" ]; then
  # inside: register the interpreter, then run the command
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  printf '%s' "$registration" >/proc/sys/fs/binfmt_misc/register
  exec "$@"
fi
[ "$(id -u)" = 0 ] || { echo "error: foreign-arch.sh needs root (it maps uids 0-65535 into a user namespace)" >&2; exit 1; }
# outside: start ourselves in new namespaces, waiting there until the id maps are written from here
TSR_FOREIGN_ARCH=$arch unshare --user --mount bash -c \
  'until grep -q " 65536$" /proc/self/uid_map; do sleep 0.05; done; exec "$0" "$@"' "$0" "$arch" "$@" &
pid=$!
until [ "$(readlink /proc/$pid/ns/user 2>/dev/null)" != "$(readlink /proc/self/ns/user)" ]; do
  kill -0 $pid 2>/dev/null || break
  sleep 0.02
done
echo "0 0 65536" >/proc/$pid/uid_map
echo "0 0 65536" >/proc/$pid/gid_map
wait $pid
