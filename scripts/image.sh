#!/usr/bin/env bash
# scripts/image.sh — builds the project's container image from deploy/Dockerfile without Docker
# and without a registry: a Debian 12 base made here from Debian packages (debootstrap), imported
# into the local container storage, `buildah bud` of the Dockerfile over it, and the result
# exported as an OCI archive that any runtime or registry client can load.
#
#   scripts/image.sh [build]     the image (default); prints the archive's path
#   scripts/image.sh base        the Debian base only
#   scripts/image.sh derived NAME CONTEXT_DIR [BUILD ARGS...]
#                                another image FROM the same base (the cluster test's Postgres
#                                and Kafka stand-ins), built from CONTEXT_DIR/Containerfile
#
# Why a base of our own: no container registry is reachable here, so `debian:bookworm-*-slim`
# cannot be pulled. debootstrap's minbase variant of bookworm is the same thing in substance
# (what the slim image is made from), so the Dockerfile stays as users run it and only its
# DEBIAN_IMAGE build argument names our base. The base is cached twice: in the container
# storage and as a tarball under .local/image, so a rerun (or a wiped storage) skips debootstrap.
# buildah's layer cache makes a rerun with unchanged sources take seconds.
#
# Environment: IMAGE (default: the name the dev overlay uses), IMAGE_DIR (.local/image).
# Needs root (debootstrap; the container storage in /var/lib/containers) and the Debian packages
# buildah, podman and debootstrap (scripts/install-deps.sh image installs them).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

# runc, not Debian's default crun: crun refuses this machine's hybrid cgroup v1/v2 layout
# ("cgroups in hybrid mode not supported"); runc runs fine and is what the kubelet uses too.
export BUILDAH_RUNTIME=runc

IMAGE=${IMAGE:-registry.example.com/concert/concert:0.1.0}
IMAGE_DIR=${IMAGE_DIR:-$LOCAL/image}
ARCHIVE="$IMAGE_DIR/concert.oci.tar"
# Suite and name of the local base. The name says "local" so nobody takes it for Debian's own
# image; the Dockerfile receives it through its DEBIAN_IMAGE argument.
SUITE=bookworm
BASE_IMAGE=localhost/debian:$SUITE-local
BASE_TAR="$IMAGE_DIR/debian-$SUITE-minbase.tar"

# The Debian base: debootstrap into a scratch folder, trimmed like the slim images (no apt
# lists, no downloaded .debs, no docs or man pages), then a tarball imported as BASE_IMAGE.
build_base() {
  if podman image exists "$BASE_IMAGE"; then
    say "base: $BASE_IMAGE already in the container storage"
    return
  fi
  if [[ ! -s "$BASE_TAR" ]]; then
    local rootfs="$IMAGE_DIR/rootfs"
    unmount_under "$rootfs"
    rm -rf "$rootfs" "$BASE_TAR.part"
    mkdir -p "$rootfs"
    say "base: debootstrap --variant=minbase $SUITE (a few minutes, once)"
    debootstrap --variant=minbase "$SUITE" "$rootfs" >"$IMAGE_DIR/debootstrap.log" 2>&1 ||
      { tail -20 "$IMAGE_DIR/debootstrap.log" >&2; unmount_under "$rootfs"; die "debootstrap failed"; }
    unmount_under "$rootfs"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/var/log/*.log \
      "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old
    # Like Debian's images: apt keeps no .debs after installing.
    printf '%s\n' 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };' \
      'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };' \
      'Binary::apt::APT::Keep-Downloaded-Packages "false";' \
      >"$rootfs/etc/apt/apt.conf.d/docker-clean"
    tar --numeric-owner --xattrs -C "$rootfs" -cf "$BASE_TAR.part" .
    mv "$BASE_TAR.part" "$BASE_TAR"
    rm -rf "$rootfs"
  fi
  say "base: importing $(du -h "$BASE_TAR" | cut -f1) as $BASE_IMAGE"
  podman import --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$BASE_TAR" "$BASE_IMAGE" >/dev/null
}

# bud NAME CONTAINERFILE CONTEXT [ARGS...]: buildah bud over the local base, never pulling.
# RUN steps use the host's network (apt-get inside the build needs the Debian mirror, and no
# container network is set up here).
bud() {
  local name=$1 file=$2 context=$3; shift 3
  buildah bud --pull=never --layers --force-rm --network=host --runtime=runc \
    --build-arg "DEBIAN_IMAGE=$BASE_IMAGE" -f "$file" -t "$name" "$@" "$context"
}

build_image() {
  build_base
  say "image: buildah bud -f deploy/Dockerfile -t $IMAGE"
  # Docker reads deploy/Dockerfile.dockerignore beside the Dockerfile; buildah needs it named.
  bud "$IMAGE" "$ROOT/deploy/Dockerfile" "$ROOT" --ignorefile "$ROOT/deploy/Dockerfile.dockerignore"
  rm -f "$ARCHIVE.part"
  buildah push --quiet "$IMAGE" "oci-archive:$ARCHIVE.part:$IMAGE"
  mv "$ARCHIVE.part" "$ARCHIVE"
  say "image: $IMAGE in ${ARCHIVE#"$ROOT"/} ($(du -h "$ARCHIVE" | cut -f1))"
  echo "$ARCHIVE"
}

((EUID == 0)) || die "needs root (debootstrap and the container storage)"
for tool in buildah podman debootstrap; do
  command -v "$tool" >/dev/null || die "$tool not found: scripts/install-deps.sh image installs it"
done
mkdir -p "$IMAGE_DIR"
case "${1:-build}" in
  build) build_image ;;
  base) build_base ;;
  derived)
    (($# >= 3)) || die "usage: $0 derived NAME CONTEXT_DIR [BUILD ARGS...]"
    build_base
    bud "$2" "$3/Containerfile" "$3" "${@:4}"
    ;;
  *) die "usage: $0 [build|base|derived NAME CONTEXT_DIR [BUILD ARGS...]]" ;;
esac
