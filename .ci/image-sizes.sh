#!/bin/sh
# Print, for each pushed multi-arch image, what every platform costs a node to pull: the sum of its
# compressed layer sizes, read from the registry's manifests (docker buildx imagetools, jq). Used by
# `make images` and the release workflow (.github/workflows/images.yml), whose job summary shows it;
# no image could be built where this project is developed, so these are the sizes to trust.
#
# Usage: .ci/image-sizes.sh REGISTRY/IMAGE:TAG...   (Markdown table rows on stdout)
set -eu
[ "$#" -gt 0 ] || { echo "usage: $0 IMAGE:TAG..." >&2; exit 2; }
echo "| image | platform | compressed size | layers |"
echo "|---|---|---|---|"
for ref in "$@"; do
  case "$ref" in
    *@*) repo=${ref%@*} ;;
    *:*) repo=${ref%:*} ;;
    *) echo "$ref: give a tag or digest" >&2; exit 2 ;;
  esac
  # Platform manifests only: buildx adds attestation manifests as platform unknown/unknown.
  docker buildx imagetools inspect --raw "$ref" \
    | jq -r '.manifests[] | select(.platform.os != "unknown") | "\(.digest) \(.platform.os)/\(.platform.architecture)\(if .platform.variant then "/" + .platform.variant else "" end)"' \
    | while read -r digest platform; do
        docker buildx imagetools inspect --raw "$repo@$digest" \
          | jq -r --arg ref "$ref" --arg platform "$platform" \
              '"| \($ref) | \($platform) | \(([.layers[].size] | add) / 1000000 | . * 10 | round / 10) MB | \(.layers | length) |"'
      done
done
