#!/usr/bin/env bash
# Container images for the test cluster, made without any image registry:
#   debian    a Debian bookworm root filesystem from debootstrap (Debian's own mirror,
#             the one apt uses on this machine), committed as an image by buildah
#   pause     the pod sandbox: Kubernetes' build/pause/linux/pause.c, compiled statically
#   coredns, kuberay-operator, local-path-provisioner
#             the Go binaries of scripts/k8s/build.sh on the Debian base
#   kafka     Debian's Java 17 + the Maven Central broker jars of scripts/kafka.sh
#   milvus    the Milvus binary of PyPI's `milvus` package
#   postgres  Debian's postgresql-15
#   facestream  the repo's Dockerfile with --build-arg BASE=<the Debian base>
#
# Each image is tagged by a hash of its inputs (Containerfile, context files, base image,
# build arguments) and saved as an OCI archive (zstd layers) in $K8S_CACHE/images; an image
# whose tarball exists is not built again. `$K8S_CACHE/images/<name>.ref` holds the
# reference of the newest build of <name>; scripts/k8s.sh imports the tarballs into
# containerd and tags each as localhost/facestream/<name>:test, the name the manifests
# under deploy/test-cluster use.
#
#   scripts/k8s/images.sh [all|base|pause|deps|facestream|NAME...]
set -euo pipefail
# shellcheck source=scripts/k8s/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMAGES="$K8S_CACHE/images"
IMAGE_DIR="$REPO/deploy/test-cluster/images"
BASE_REF="localhost/facestream/debian:bookworm"
# buildah's own storage (not /var/lib/containers), overlay on this machine's ext4; set
# K8S_BUILDAH_DRIVER=vfs where overlay cannot be mounted (much slower, more disk).
BUILDAH=(buildah --root "$K8S_CACHE/buildah/root" --runroot "$K8S_CACHE/buildah/runroot"
  --storage-driver "${K8S_BUILDAH_DRIVER:-overlay}")

need() {
  local missing=() p
  for p in "$@"; do command -v "$p" >/dev/null || missing+=("$p"); done
  [[ ${#missing[@]} == 0 ]] && return
  [[ "$(id -u)" == 0 ]] || die "missing ${missing[*]} (apt-get install buildah debootstrap, as root)"
  log "installing Debian packages: buildah debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends buildah debootstrap >/dev/null
}

# The Debian mirror apt uses here (deb822 or one-line sources), else deb.debian.org.
debian_mirror() {
  local uri
  uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -oE '(^URIs:[[:space:]]*|^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)[a-z]+://[^[:space:]]+/debian/?([[:space:]]|$)' |
    grep -oE '[a-z]+://[^[:space:]]+' | head -n 1 || true)"
  echo "${uri:-http://deb.debian.org/debian}"
}

# Fail before a build, not 15 minutes into it: the facestream image (~8 GB unpacked)
# needs its rootfs, the committed layer and the archive at once; a build with 25 GB free
# died at its last step with "no space left on device".
declare -A NEED_GB=([facestream]=30)
need_disk() {
  local want="${NEED_GB[$1]:-3}" free
  mkdir -p "$K8S_CACHE/buildah"
  free="$(df -BG --output=avail "$K8S_CACHE/buildah" | tail -n 1 | tr -dc 0-9)"
  ((free >= want)) ||
    die "$1: the build needs about ${want} GB free under $K8S_CACHE, there are ${free} GB (scripts/k8s.sh up removes former images from containerd)"
}

image_id() { "${BUILDAH[@]}" inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null; }

build_base() {
  if image_id "$BASE_REF" >/dev/null; then
    log "debian: $BASE_REF present"
    return
  fi
  need debootstrap buildah
  local rootfs="$IMAGES/debian-bookworm-rootfs.tar" mirror start=$SECONDS
  mirror="$(debian_mirror)"
  if [[ ! -s "$rootfs" ]]; then
    local dir="$IMAGES/debootstrap.$$"
    rm -rf "$dir"
    log "debian: debootstrap --variant=minbase bookworm from $mirror (a few minutes)"
    debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$IMAGES/debootstrap.log" 2>&1 ||
      { tail -20 "$IMAGES/debootstrap.log" >&2; rm -rf "$dir"; die "debootstrap failed"; }
    # apt in the image: the same mirror, with updates and security; no package lists or
    # caches in the image (each Containerfile runs apt-get update itself).
    rm -f "$dir/etc/apt/sources.list"
    cat >"$dir/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian*}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
      >"$dir/etc/apt/apt.conf.d/90facestream-no-recommends"
    chroot "$dir" apt-get clean
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/log/*.log "$dir"/tmp/*
    tar --numeric-owner --xattrs -C "$dir" -cf "$rootfs.tmp" .
    mv "$rootfs.tmp" "$rootfs"
    rm -rf "$dir"
  fi
  local ctr mnt
  ctr="$("${BUILDAH[@]}" from scratch)"
  mnt="$("${BUILDAH[@]}" mount "$ctr")"
  tar --numeric-owner --xattrs -C "$mnt" -xf "$rootfs"
  "${BUILDAH[@]}" umount "$ctr" >/dev/null
  "${BUILDAH[@]}" config --os linux --arch amd64 --cmd '["/bin/bash"]' \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label org.opencontainers.image.description="Debian bookworm (minbase, debootstrap from $mirror)" "$ctr"
  "${BUILDAH[@]}" commit --rm -q "$ctr" "$BASE_REF" >/dev/null
  log "debian: $BASE_REF built in $((SECONDS - start))s"
  echo "debian $((SECONDS - start))s" >>"$IMAGES/timings.log"
}

# Hash of files (paths relative to $1, then more paths), stable across machines. Paths
# matching $HASH_EXCLUDE (find -path patterns, space-separated) are left out.
hash_tree() {
  local root="$1" pattern patterns skip=()
  shift
  read -r -a patterns <<<"${HASH_EXCLUDE:-}"   # read: no glob expansion of the patterns
  for pattern in "${patterns[@]}"; do skip+=(! -path "$pattern"); done
  (cd "$root" && find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' "${skip[@]}" -print0 |
    LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

# build_image NAME CONTEXT CONTAINERFILE INPUT_HASH [buildah build args...]
# Prints the image reference. Builds only when no tarball of that input hash exists.
build_image() {
  local name="$1" context="$2" file="$3" inputs="$4"
  shift 4
  local base_id key ref tar start=$SECONDS
  base_id="$(image_id "$BASE_REF" || true)"
  key="$(printf '%s\n' "$inputs" "$base_id" "$(sha256sum <"$file")" "$@" | sha256sum | cut -c1-12)"
  ref="localhost/facestream/$name:$key"
  tar="$IMAGES/$name-$key.tar"
  if [[ -s "$tar" ]]; then
    log "$name: $ref cached ($tar)"
    echo "$ref" >"$IMAGES/$name.ref"
    return
  fi
  if ! image_id "$ref" >/dev/null; then
    need_disk "$name"
    log "$name: building $ref"
    # chroot isolation: as root, no runc or user namespace is needed for RUN steps, and
    # they share the host's network, so apt and pip reach the mirrors as the host does.
    # No --layers: the image is removed from buildah's storage once saved (below), so a
    # layer cache would only keep a second copy of it.
    if ! nice -n 10 "${BUILDAH[@]}" build --isolation chroot --network host --pull=never \
        -f "$file" -t "$ref" --build-arg "BASE=$BASE_REF" "$@" "$context" >"$IMAGES/$name-build.log" 2>&1; then
      tail -40 "$IMAGES/$name-build.log" >&2
      die "$name: build failed (log: $IMAGES/$name-build.log)"
    fi
  fi
  # An OCI archive with zstd layers: the facestream image is ~8 GB uncompressed (torch
  # and its CUDA wheels), about a third compressed; containerd >= 1.5 unpacks zstd.
  rm -f "$tar.tmp"
  nice -n 10 "${BUILDAH[@]}" push -q --compression-format zstd "$ref" "oci-archive:$tar.tmp:$ref" >/dev/null
  mv "$tar.tmp" "$tar"
  # The tarballs of former inputs are never imported again (the .ref names this one).
  find "$IMAGES" -maxdepth 1 -name "$name-*.tar" ! -path "$tar" -delete
  "${BUILDAH[@]}" rmi "$ref" >/dev/null   # disk: the tarball is the cache
  echo "$ref" >"$IMAGES/$name.ref"
  log "$name: built in $((SECONDS - start))s ($(du -h "$tar" | cut -f1))"
  echo "$name $((SECONDS - start))s $(du -h "$tar" | cut -f1)" >>"$IMAGES/timings.log"
}

# The builder's pip settings for RUN steps that pip install (a CA bundle where egress is
# intercepted, an index URL): the CA file is mounted read-only for the build only and
# named by a build argument; nothing of it is written into an image.
PIP_ARGS=()
pip_args() {
  local cert index
  cert="${PIP_CERT:-$(pip config get global.cert 2>/dev/null || true)}"
  index="${PIP_INDEX_URL:-$(pip config get global.index-url 2>/dev/null || true)}"
  if [[ -n "$cert" && -f "$cert" ]]; then
    PIP_ARGS+=(--volume "$cert:/etc/facestream-build-ca.pem:ro" --build-arg PIP_CERT=/etc/facestream-build-ca.pem)
  fi
  if [[ -n "$index" ]]; then PIP_ARGS+=(--build-arg "PIP_INDEX_URL=$index"); fi
}

build_pause() {
  local kdir ctx
  kdir="$(mod_dir "k8s.io/kubernetes@$K8S_VERSION")"
  ctx="$IMAGES/ctx-pause"
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp "$IMAGE_DIR/pause/Containerfile" "$ctx/"
  command -v gcc >/dev/null || die "gcc is needed for the pause binary"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_TAG-facestream" \
    -o "$ctx/pause" "$kdir/build/pause/linux/pause.c"
  strip "$ctx/pause"
  build_image pause "$ctx" "$ctx/Containerfile" "$(hash_tree "$ctx" .)"
}

# go_image NAME BINARY_PATH: a Go binary of build.sh on the Debian base.
go_image() {
  local name="$1" bin="$2" ctx="$IMAGES/ctx-$1"
  [[ -x "$bin" ]] || die "$name: $bin missing (scripts/k8s/build.sh first)"
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp "$bin" "$ctx/"
  build_image "$name" "$ctx" "$IMAGE_DIR/go-binary/Containerfile" "$(hash_tree "$ctx" .)" \
    --build-arg "BINARY=$(basename "$bin")"
}

build_kafka() {
  local version="${KAFKA_VERSION:-4.4.0}" ctx="$IMAGES/ctx-kafka"
  bash "$REPO/scripts/kafka.sh" fetch >&2
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp -al "$CACHE/kafka/$version/libs" "$ctx/libs" 2>/dev/null || cp -a "$CACHE/kafka/$version/libs" "$ctx/libs"
  rm -f "$ctx/libs/.complete"
  cp "$IMAGE_DIR/kafka/log4j2.xml" "$IMAGE_DIR/kafka/kafka-entrypoint.sh" "$ctx/"
  build_image kafka "$ctx" "$IMAGE_DIR/kafka/Containerfile" "$(hash_tree "$ctx" .)"
}

build_milvus() {
  pip_args
  build_image milvus "$IMAGE_DIR/milvus" "$IMAGE_DIR/milvus/Containerfile" \
    "$(hash_tree "$IMAGE_DIR/milvus" .)" "${PIP_ARGS[@]}"
}

build_postgres() {
  build_image postgres "$IMAGE_DIR/postgres" "$IMAGE_DIR/postgres/Containerfile" \
    "$(hash_tree "$IMAGE_DIR/postgres" .)"
}

# The project's own image from its Dockerfile. Inputs: what the Dockerfile copies.
build_facestream() {
  pip_args
  # .dockerignore leaves the cluster's own tooling (scripts/k8s*) out of the image.
  build_image facestream "$REPO" "$REPO/Dockerfile" \
    "$(HASH_EXCLUDE='scripts/k8s/* scripts/k8s.sh' hash_tree "$REPO" Dockerfile .dockerignore \
      pyproject.toml README.md pipeline scripts)" "${PIP_ARGS[@]}"
}

build_deps() {
  build_pause
  go_image coredns "$BIN_ROOT/coredns-$COREDNS_VERSION/coredns"
  go_image kuberay-operator "$BIN_ROOT/kuberay-$KUBERAY_VERSION/kuberay-operator"
  go_image local-path-provisioner "$BIN_ROOT/local-path-$LOCALPATH_VERSION/local-path-provisioner"
  build_postgres
  build_kafka
  build_milvus
}

need buildah debootstrap
mkdir -p "$IMAGES"
[[ $# -gt 0 ]] || set -- all
for what in "$@"; do
  case "$what" in
    all) build_base; build_deps; build_facestream ;;
    base) build_base ;;
    deps) build_base; build_deps ;;
    pause) build_base; build_pause ;;
    coredns) build_base; go_image coredns "$BIN_ROOT/coredns-$COREDNS_VERSION/coredns" ;;
    kuberay-operator) build_base; go_image kuberay-operator "$BIN_ROOT/kuberay-$KUBERAY_VERSION/kuberay-operator" ;;
    local-path-provisioner) build_base; go_image local-path-provisioner "$BIN_ROOT/local-path-$LOCALPATH_VERSION/local-path-provisioner" ;;
    kafka) build_base; build_kafka ;;
    milvus) build_base; build_milvus ;;
    postgres) build_base; build_postgres ;;
    facestream) build_base; build_facestream ;;
    *) die "usage: $0 [all|base|deps|pause|coredns|kuberay-operator|local-path-provisioner|kafka|milvus|postgres|facestream]..." ;;
  esac
done
