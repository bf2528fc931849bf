#!/usr/bin/env bash
# images.sh ARCH CC OUTDIR KUBE_VERSION: the node's two small images for ARCH, as docker-archives in OUTDIR, for
# `ctr images import` on a test node: the pause image from Kubernetes' own build/pause/linux/pause.c at the
# kubelet's release (its Makefile's TAG names it registry.k8s.io/pause:<TAG>, the name containerd expects) and the
# test image (.ci/node/nettest.c). Both static, compiled with CC: gcc for the build machine's arch, Debian's
# aarch64-linux-gnu-gcc for arm64 (the arm64 node of tests/node/test_arm64_node.py runs them under qemu-user).
# Writes OUTDIR/pause.tar, OUTDIR/nettest.tar and OUTDIR/pause.ref (the pause image's reference).
set -euo pipefail
arch=${1:?usage: images.sh ARCH CC OUTDIR KUBE_VERSION} cc=${2:?} out=${3:?} version=${4:?}
here=$(cd "$(dirname "$0")" && pwd)
src=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$src" ] || { echo "error: images.sh: no source of k8s.io/kubernetes@$version from the Go module proxy" >&2; exit 1; }
tag=$(sed -n 's/^TAG ?= *//p' "$src/build/pause/Makefile")
[ -n "$tag" ] || { echo "error: images.sh: no TAG in $src/build/pause/Makefile" >&2; exit 1; }
mkdir -p "$out/bin"
"$cc" -Os -Wall -Werror -static -DVERSION="v$tag-tsr" -o "$out/bin/pause" "$src/build/pause/linux/pause.c"
"$cc" -Os -Wall -Werror -static -o "$out/bin/nettest" "$here/nettest.c"
"$here/image.sh" "$out/bin/pause" "registry.k8s.io/pause:$tag" "$out/pause.tar" 65535:65535 "$arch"
"$here/image.sh" "$out/bin/nettest" tsr.local/nettest:1 "$out/nettest.tar" 65535:65535 "$arch"
echo "registry.k8s.io/pause:$tag" >"$out/pause.ref"
