#!/usr/bin/env bash
# A local stand-in for python:3.11-slim, for machines that cannot pull images: Debian
# bookworm (whose python3.11 is what python:3.11-slim ships) made with debootstrap and
# imported into podman. Builds it if missing and prints its name on stdout (progress goes
# to stderr), so that:
#   podman build --build-arg BASE_IMAGE="$(deploy/base-image.sh)" .
#   deploy/base-image.sh prometheus   # the same for a Prometheus from Debian's package
# The tag holds a hash of this script: editing it builds a new image, and an unchanged
# script reuses the one already in podman's storage (that is the cache between CI runs).
# Needs root, debootstrap and podman. Settings: MIRROR (default: this machine's apt mirror).
set -euo pipefail

KIND=${1:-python}
SELF_HASH=$(sha256sum "$0" | cut -c1-12)
case "$KIND" in
  python) IMAGE="localhost/vigil-base-python:3.11-bookworm-$SELF_HASH" ;;
  prometheus) IMAGE="localhost/vigil-base-prometheus:bookworm-$SELF_HASH" ;;
  *) echo "usage: $0 [python|prometheus]" >&2; exit 2 ;;
esac

if podman image exists "$IMAGE"; then
  echo "$IMAGE"
  exit 0
fi

say() { printf '==> %s\n' "$*" >&2; }

# The first Debian mirror apt is configured with (deb822 or one-line sources).
apt_mirror() {
  local uri
  uri=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | grep -oE 'https?://[^ ]+/debian/?$' | head -n1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR=${MIRROR:-$(apt_mirror)}

ROOTFS=$(mktemp -d /var/tmp/vigil-base.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

case "$KIND" in
  python)
    # python3.11-venv depends on the virtual python3.11-distutils, which --include cannot
    # resolve; python3-distutils provides it.
    PACKAGES=python3.11,python3.11-venv,python3-distutils,python3-pip-whl,python3-setuptools-whl,ca-certificates
    ;;
  prometheus)
    PACKAGES=prometheus,ca-certificates
    ;;
esac

say "debootstrap bookworm ($PACKAGES) from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" "$MIRROR" >&2

# Trust what this host trusts (an egress proxy's CA, say), so that pip inside an image
# build reaches the package index from here. The official base needs no such thing.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
  chroot "$ROOTFS" update-ca-certificates >&2
fi

CHANGES=()
case "$KIND" in
  python)
    # python:3.11-slim has `python` and `pip` on PATH and lets pip install system-wide;
    # a venv whose bin/ comes first on PATH gives both (and console scripts such as `vigil`).
    chroot "$ROOTFS" python3.11 -m venv /opt/python
    ln -s /opt/python/bin/python /opt/python/bin/pip "$ROOTFS/usr/local/bin/"
    CHANGES+=(--change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
              --change 'CMD ["python3"]')
    ;;
  prometheus)
    # Like prom/prometheus: runs as nobody, data under /prometheus, config in /etc/prometheus.
    mkdir -p "$ROOTFS/prometheus"
    chown 65534:65534 "$ROOTFS/prometheus"
    CHANGES+=(--change 'USER 65534:65534'
              --change 'WORKDIR /prometheus'
              --change 'ENTRYPOINT ["/usr/bin/prometheus"]'
              --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]')
    ;;
esac

# Leave out what an image does not need: apt lists and caches, docs, man pages.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/usr/share/doc/* \
       "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/* "$ROOTFS"/var/log/*

say "importing $IMAGE"
tar -C "$ROOTFS" --numeric-owner -c . | podman import "${CHANGES[@]}" - "$IMAGE" >&2
echo "$IMAGE"
