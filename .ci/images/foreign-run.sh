#!/usr/bin/env bash
# foreign-run.sh ARCH REF [buildah-run options...] -- CMD...: run CMD in a fresh working container of the image REF
# that `build.sh` built for the foreign ARCH (its storage is .state/containers-ARCH), under qemu-user emulation
# (foreign-arch.sh: a user namespace with its own binfmt_misc), then remove the container. What `make arm64-smoke`
# (tests/arm64/) uses to run the arm64 images' own Python, torch and code on this amd64 machine.
#
# buildah's chroot isolation: the image's filesystem (a writable overlay over it), environment, working directory
# and the given --user; the host's network namespace, so a server inside listens on this machine's 127.0.0.1 and a
# MinIO on 127.0.0.1 is reachable from inside. Options before `--` go to `buildah run` (-v SRC:DST, --env K=V,
# --user UID:GID). Exit status: CMD's. Needs root (foreign-arch.sh writes the id maps).
#
#   .ci/images/foreign-run.sh arm64 localhost/tsr-components:0.1.0-arm64 --user 10001:10001 -- python -m tsr.core.backend
set -euo pipefail
arch=${1:?usage: foreign-run.sh ARCH REF [buildah-run options...] -- CMD...}
ref=${2:?usage: foreign-run.sh ARCH REF [buildah-run options...] -- CMD...}
shift 2
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
if [ "${TSR_FOREIGN_ARCH:-}" != "$arch" ]; then
  exec "$ROOT/.ci/images/foreign-arch.sh" "$arch" "$ROOT/.ci/images/foreign-run.sh" "$arch" "$ref" "$@"
fi

opts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do opts+=("$1"); shift; done
[ "${1:-}" = "--" ] && [ $# -gt 1 ] || { echo "error: foreign-run.sh: no command after --" >&2; exit 2; }
shift
store=$ROOT/.state/containers-$arch
[ -s "$store/driver" ] || { echo "error: no $arch image storage at $store: build it with make images-local PLATFORMS=linux/$arch" >&2; exit 2; }
B=(buildah --root "$store/storage" --runroot "$store/run" --storage-driver "$(cat "$store/driver")")
ctr=$("${B[@]}" from --pull=never --name "tsr-run-$$-$RANDOM" "$ref")
cleanup() { "${B[@]}" rm "$ctr" >/dev/null 2>&1 || true; }
trap cleanup EXIT
trap 'exit 143' TERM INT
# not exec'd: the trap removes the working container when CMD ends or this script is stopped
"${B[@]}" run --isolation chroot "${opts[@]}" "$ctr" -- "$@" &
child=$!
trap 'kill -TERM $child 2>/dev/null; wait $child; exit 143' TERM INT
wait $child
