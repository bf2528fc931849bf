#!/usr/bin/env bash
# make images-local: build tsr-components, tsr-predictor (components/Dockerfile, serving/Dockerfile, unchanged)
# and a KServe storage-initializer (.ci/images/storage-initializer/) on this machine, without a daemon and
# without a registry: buildah, project-local storage under .state/containers, archives under .state/images.
# docs/images.md ("Building here, without Docker or a registry") explains each choice.
#
#   .ci/images/build.sh                  # env: TAG (0.1.0), PLATFORMS (linux/amd64), PYTHON_IMAGE
#
# Output: localhost/tsr-components:$TAG, localhost/tsr-predictor:$TAG, localhost/tsr-storage-initializer:$TAG in
# the buildah storage; .state/images/<name>-<tag>-<arch>.tar (docker-archive: `ctr -n k8s.io images import`);
# .state/images/sizes.json and images.json (what tests/images reads).
# A foreign platform (PLATFORMS=linux/arm64 on amd64) is built by this same script run again inside
# .ci/images/foreign-arch.sh (qemu-user in a user namespace of its own): its own storage (.state/containers-<arch>),
# tags <name>:$TAG-<arch> and output folder .state/images/<arch>/ (archives, sizes.json, images.json).
# Idempotent: the stand-in base is rebuilt only when its inputs change, buildah's --layers cache keeps every
# unchanged step, and an archive is rewritten only when its image changed.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
TAG=${TAG:-0.1.0}
# Only linux/amd64 today; issue 15 adds linux/arm64 (the stand-in base under QEMU, per-arch tags + a manifest list).
PLATFORMS=${PLATFORMS:-linux/amd64}
PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11.14-slim-bookworm}
KSERVE_STORAGE_VERSION=$(sed -n 's/^kserve-storage==//p' .ci/images/storage-initializer/requirements.txt)
STATE=$ROOT/.state
OUT=$STATE/images
HOST_CA=/etc/ssl/certs/ca-certificates.crt
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

log() { printf '[images-local] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s; }
START=$(now)

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, buildah storage under .state/containers): run it as root"

# ---- foreign platforms: each one by this script again, under emulation, before the native one ----------------
NATIVE=linux/$(dpkg --print-architecture)
if [ -z "${TSR_FOREIGN_ARCH:-}" ]; then
  native=
  for platform in ${PLATFORMS//,/ }; do
    if [ "$platform" = "$NATIVE" ]; then
      native=$platform
    else
      log "$platform: built under emulation (qemu-user-static in a user namespace of its own: .ci/images/foreign-arch.sh)"
      PLATFORMS=$platform "$ROOT/.ci/images/foreign-arch.sh" "${platform#*/}" "$ROOT/.ci/images/build.sh" ||
        die "$platform failed"
    fi
  done
  [ -n "$native" ] || exit 0
  PLATFORMS=$native
  STORAGE=$STATE/containers
  REF_TAG=$TAG
  BUILD_PLATFORM=$NATIVE
else
  [ "$PLATFORMS" = "linux/$TSR_FOREIGN_ARCH" ] || die "inside foreign-arch.sh $TSR_FOREIGN_ARCH, PLATFORMS=$PLATFORMS"
  STORAGE=$STATE/containers-$TSR_FOREIGN_ARCH  # a storage made inside the user namespace (overlay's xattrs differ)
  OUT=$OUT/$TSR_FOREIGN_ARCH
  REF_TAG=$TAG-$TSR_FOREIGN_ARCH
  BUILD_PLATFORM=$PLATFORMS  # see build(): the wheel stage too runs under emulation here
fi
for tool in buildah debootstrap skopeo curl; do
  command -v $tool >/dev/null || die "$tool not found (make images-local installs it with apt-get)"
done
mkdir -p "$OUT" "$STORAGE"
# A cold build needs room for the base, the builder stage's venv and both images (measured: 21 GB of storage, the
# venv three times: builder, components, predictor), plus 12 GB for the archives; over a warm storage, a rebuild
# after a code change adds little.
if [ -d "$STORAGE/storage" ] && [ -n "$(ls -A "$STORAGE/storage" 2>/dev/null)" ]; then need=8
elif [ "${TSR_IMAGES_ARCHIVES:-1}" = 0 ]; then need=22
else need=33; fi
"$ROOT/.ci/disk-free.sh" "$STATE" "$need" "make images-local"

# ---- storage: project-local; overlay when the kernel lets root use it, else vfs (full copy per layer) --------
# The driver is chosen once and remembered: a storage directory cannot change driver.
DRIVER_FILE=$STORAGE/driver
if [ ! -s "$DRIVER_FILE" ]; then
  if buildah --root "$STORAGE/storage" --runroot "$STORAGE/run" --storage-driver overlay \
       info >/dev/null 2>&1; then
    echo overlay >"$DRIVER_FILE"
  else
    rm -rf "$STORAGE/storage" "$STORAGE/run"
    echo vfs >"$DRIVER_FILE"
  fi
fi
DRIVER=$(cat "$DRIVER_FILE")
B=(buildah --root "$STORAGE/storage" --runroot "$STORAGE/run" --storage-driver "$DRIVER")
log "buildah $(buildah --version | awk '{print $3}'), storage $STORAGE ($DRIVER driver)"

image_exists() { "${B[@]}" inspect --type image "$1" >/dev/null 2>&1; }
image_id() { "${B[@]}" inspect --type image --format '{{.FromImageID}}' "$1"; }
label() { "${B[@]}" inspect --type image --format "{{index .Docker.Config.Labels \"$2\"}}" "$1"; }

# ---- base image: the pinned tag when Docker Hub answers, else a Debian stand-in -------------------------------
BASE_NOTE=
resolve_base() {
  local platform=$1 arch=${1#*/}
  local probe
  if probe=$(timeout 15 skopeo inspect --override-arch "$arch" --raw "docker://docker.io/library/$PYTHON_IMAGE" \
       2>&1 >/dev/null | sed -e 's/.*msg="//' -e 's/"$//' -e 's/^Error parsing image name [^ ]*: //' | cut -c1-300); then
    log "base: $PYTHON_IMAGE from Docker Hub"
    "${B[@]}" pull -q --platform "$platform" "docker.io/library/$PYTHON_IMAGE" >/dev/null
    BASE=docker.io/library/$PYTHON_IMAGE
    BASE_NOTE="$PYTHON_IMAGE (Docker Hub)"
    return
  fi
  # The stand-in's name carries the hash of its recipe: a changed recipe is a new image, an unchanged one is reused.
  local inputs
  inputs=$(cat .ci/images/standin-base.sh | sha256sum | cut -c1-12)
  BASE=localhost/tsr-python-standin:3.11-bookworm-$arch-$inputs
  log "REGISTRY UNREACHABLE: $PYTHON_IMAGE cannot be pulled from Docker Hub (${probe:-no answer in 15 s});"
  if image_exists "$BASE"; then
    log "  using the local Debian stand-in $BASE (cached)"
  else
    log "  building a local Debian stand-in $BASE (debootstrap --variant=minbase bookworm + Debian's python3)"
    local t0 rootfs=$OUT/standin-rootfs-$arch ctr mnt
    t0=$(now)
    .ci/images/standin-base.sh "$rootfs" "$arch" >"$OUT/standin-$arch.log" 2>&1 ||
      { tail -20 "$OUT/standin-$arch.log" >&2; die "stand-in base failed (log: $OUT/standin-$arch.log)"; }
    local pyver
    pyver=$(chroot "$rootfs" /usr/bin/python3 -c 'import platform; print(platform.python_version())')
    ctr=$("${B[@]}" from scratch)
    mnt=$("${B[@]}" mount "$ctr")
    cp -a "$rootfs/." "$mnt/"
    "${B[@]}" umount "$ctr" >/dev/null
    "${B[@]}" config --os linux --arch "$arch" --cmd python3 \
      --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
      --label io.tsr.standin.for="$PYTHON_IMAGE" --label io.tsr.standin.python="$pyver" \
      --label io.tsr.standin.debian="$(cat "$rootfs/etc/debian_version")" \
      --created-by "tsr .ci/images/standin-base.sh (debootstrap --variant=minbase bookworm)" "$ctr"
    "${B[@]}" commit -q --format docker --rm "$ctr" "$BASE" >/dev/null
    rm -rf "$rootfs"
    log "  stand-in built in $(($(now) - t0)) s"
  fi
  local pyver debver
  pyver=$(label "$BASE" io.tsr.standin.python)
  debver=$(label "$BASE" io.tsr.standin.debian)
  log "  stand-in: Debian $debver, Python $pyver (Debian's python3; the official image has 3.11.14 built from source)"
  BASE_NOTE="local Debian stand-in $BASE: Debian $debver, Python $pyver (Docker Hub unreachable)"
}

# ---- torch: the CPU index when reachable, else PyPI's default (CUDA) wheels ----------------------------------
TORCH_ARGS=()
if probe=$(curl -fsS --max-time 10 -o /dev/null "$TORCH_CPU_INDEX/torch/" 2>&1); then
  TORCH_NOTE="CPU wheels from $TORCH_CPU_INDEX"
  log "torch: $TORCH_NOTE"
else
  TORCH_ARGS=(--build-arg TORCH_INDEX_URL=)
  TORCH_NOTE="PyPI's default wheels (CUDA build + nvidia-* wheels): $TORCH_CPU_INDEX unreachable"
  log "TORCH CPU INDEX UNREACHABLE ($TORCH_CPU_INDEX: ${probe:-no answer in 10 s}): building with"
  log "  --build-arg TORCH_INDEX_URL= (PyPI's torch, a CUDA build: the images are several GB larger than the CPU ones)"
fi

# ---- pip inside RUN steps: the host's CA bundle (a TLS proxy may sit in front of PyPI) mounted read-only over
# the image's own bundle, for the build only. Debian's pip and the venv's pip both read that path. The target
# must already exist in the image: buildah leaves an empty file behind for a mount target it had to create
# (that is why there is no pip.conf mount; tests/images checks that nothing is left).
MOUNTS=(-v "$HOST_CA:/etc/ssl/certs/ca-certificates.crt:ro")

# revision <paths...>: the last commit that changed them, + -dirty when they have uncommitted changes. A commit
# of docs or tests then leaves the images' revision label, and so their final stages' layer cache, alone.
revision() {
  local rev
  rev=$(git log -1 --format=%H -- "$@" 2>/dev/null || true)
  [ -z "$(git status --porcelain -- "$@" 2>/dev/null)" ] || rev=${rev:-unknown}-dirty
  echo "${rev:-unknown}"
}
TSR_REVISION=$(revision pyproject.toml README.md requirements.lock tsr components serving pipelines \
  components/Dockerfile serving/Dockerfile)
INITIALIZER_REVISION=$(revision .ci/images/storage-initializer)

# prune: drop what earlier builds left (a replaced image, then its now unused layers: one level per pass), right
# after each image, so that a rebuild needs free space for one image at a time, not for all of them.
prune() {
  for _ in $(seq 40); do
    [ -n "$("${B[@]}" rmi --prune 2>/dev/null)" ] || break
  done
}

# build <name> <dockerfile> <context> <platform> <revision> [extra bud args...]
build() {
  local name=$1 dockerfile=$2 context=$3 platform=$4 revision=$5 t0 stage
  shift 5
  local ref=localhost/$name:$REF_TAG log=$OUT/$name-build.log
  t0=$(now)
  log "building $ref ($platform) from $dockerfile"
  local bud=("${B[@]}" bud --layers --isolation chroot --format docker --platform "$platform"
    # BUILDPLATFORM explicitly: buildah 1.28 sets it for RUN steps, not for `FROM --platform=$BUILDPLATFORM`.
    # A foreign build's storage holds only that arch's stand-in, which buildah will not use for another platform
    # (it tries to pull it), so there the wheel stage runs on the target platform too, under emulation: the
    # wheel is pure Python, the same bytes either way.
    --build-arg BUILDPLATFORM="$BUILD_PLATFORM"
    --build-arg PYTHON_IMAGE="$BASE"
    --build-arg VERSION="$TAG" --build-arg REVISION="$revision" "${MOUNTS[@]}" "$@" -f "$dockerfile")
  : >"$log"
  # Each named stage first, tagged, so that pruning old images below never drops the layer cache of a stage
  # (an untagged last image of a stage has no children: buildah would count it as dangling).
  for stage in $(sed -n 's/^FROM .* AS \([a-z0-9_-]*\)$/\1/ip' "$dockerfile"); do
    "${bud[@]}" --target "$stage" -t "localhost/tsr-build-cache:$name-$stage" "$context" >>"$log" 2>&1 ||
      { tail -30 "$log" >&2; die "$ref, stage $stage, failed (log: $log)"; }
  done
  # The version/revision labels again on the command line: buildah 1.28 reuses a cached LABEL step even when
  # the build arguments it expands have changed.
  "${bud[@]}" --label org.opencontainers.image.version="$TAG" --label org.opencontainers.image.revision="$revision" \
    --label io.tsr.build.base="$BASE_NOTE" -t "$ref" "$context" >>"$log" 2>&1 ||
    { tail -30 "$log" >&2; die "$ref failed (log: $log)"; }
  prune
  BUILD_SECONDS[$name]=$(($(now) - t0))
  log "  $ref: $(image_id "$ref" | cut -c1-12) in ${BUILD_SECONDS[$name]} s (log: $OUT/$name-build.log)"
}

# archive <name> <arch>: a docker-archive (for `ctr images import` / a KFP node), only when the image changed
# since the last run. (No OCI layout beside it: gzip'd copies of 6 GB images do not fit the disk here; sizes.py
# measures the compressed size by gzip-streaming the archive's layers instead.)
archive() {
  local name=$1 arch=$2 ref=localhost/$1:$REF_TAG id tar=$OUT/$1-$TAG-$2.tar
  id=$(image_id "$ref")
  if [ -f "$tar" ] && [ "$(cat "$tar.id" 2>/dev/null)" = "$id" ]; then
    log "  $tar is current"
    return
  fi
  rm -f "$tar" "$tar.id"
  "${B[@]}" push -q "$ref" "docker-archive:$tar.part:$ref" >/dev/null
  mv "$tar.part" "$tar"
  echo "$id" >"$tar.id"
  log "  wrote $tar"
}

declare -A BUILD_SECONDS=()
IMAGES=()
for platform in ${PLATFORMS//,/ }; do
  arch=${platform#*/}
  resolve_base "$platform"
  # The wheel and builder stages of the two Dockerfiles are the same instructions on the same base, so
  # --layers builds them once: the predictor reuses the components build's venv.
  build tsr-components components/Dockerfile . "$platform" "$TSR_REVISION" "${TORCH_ARGS[@]}"
  build tsr-predictor serving/Dockerfile . "$platform" "$TSR_REVISION" "${TORCH_ARGS[@]}"
  build tsr-storage-initializer .ci/images/storage-initializer/Dockerfile .ci/images/storage-initializer "$platform" \
    "$INITIALIZER_REVISION" \
    --build-arg KSERVE_STORAGE_VERSION="$KSERVE_STORAGE_VERSION"
  # built.json: where the images are (what `make test`'s runc smoke test reads; written with or without archives)
  python3 -c 'import json, sys; s, d, t, *n = sys.argv[1:]; print(json.dumps({"buildah": {"root": s + "/storage",
    "runroot": s + "/run", "driver": d}, "images": {x: f"localhost/{x}:{t}" for x in n}}, indent=2))' \
    "$STORAGE" "$DRIVER" "$REF_TAG" tsr-components tsr-predictor tsr-storage-initializer >"$OUT/built.json"
  if [ "${TSR_IMAGES_ARCHIVES:-1}" = 0 ]; then
    log "no archives or sizes (TSR_IMAGES_ARCHIVES=0: make test's build); make images-local writes them"
    continue
  fi
  for name in tsr-components tsr-predictor tsr-storage-initializer; do
    archive "$name" "$arch"
    IMAGES+=("$name|$arch|localhost/$name:$REF_TAG|$OUT/$name-$TAG-$arch.tar|${BUILD_SECONDS[$name]}")
  done
done

# images.json (what tests/images reads) and sizes.json; sizes are computed again only for changed archives.
if [ ${#IMAGES[@]} = 0 ]; then
  log "done in $(($(now) - START)) s"
  exit 0
fi
python3 .ci/images/sizes.py --out "$OUT" --driver "$DRIVER" --storage "$STORAGE" \
  --base-ref "$BASE" --base "$BASE_NOTE" --torch "$TORCH_NOTE" --revision "$TSR_REVISION" "${IMAGES[@]}"
log "done in $(($(now) - START)) s; check the images with: make images-test"
