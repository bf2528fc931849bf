#!/usr/bin/env bash
# image.sh BINARY REF ARCHIVE [USER] [ARCH]: a one-file image (BINARY as /<name>, its entrypoint) as a docker-archive
# tagged REF for ARCH (default: the build machine's), for `ctr -n k8s.io images import` on the test node. No
# daemon and no registry: umoci builds the OCI layout from scratch, skopeo writes the archive (.ci/node/images.sh
# builds the pause and test images this way).
set -euo pipefail
binary=$1 ref=$2 archive=$3 user=${4:-65535:65535} arch=${5:-$(go env GOARCH 2>/dev/null || echo amd64)}
name=$(basename "$binary")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umoci init --layout "$work/oci"
umoci new --image "$work/oci:img"
umoci unpack --image "$work/oci:img" "$work/bundle" >/dev/null
install -m 755 "$binary" "$work/bundle/rootfs/$name"
umoci repack --image "$work/oci:img" "$work/bundle"
umoci config --image "$work/oci:img" --architecture "$arch" --os linux \
  --config.entrypoint "/$name" --config.user "$user" --config.workingdir / \
  --history.created_by "tsr-platform .ci/node/image.sh $name"
rm -f "$archive"
skopeo copy --quiet "oci:$work/oci:img" "docker-archive:$archive:$ref"
