#!/usr/bin/env bash
# Builds the image from the Dockerfile and runs it, on a machine without a container daemon or
# access to Docker Hub (like the project's CI machines): podman with chroot isolation, over a
# Debian bookworm base made with debootstrap. Where `docker build .` works, use that instead.
# Run as root (debootstrap, mounts). Needs: podman, debootstrap (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
base=localhost/pbxmesh-base:3.11-bookworm
image=localhost/pbxmesh:check

if ! podman image exists "$base"; then
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase \
    --include=python3.11,python3.11-venv,python3-distutils,python3-pip-whl,python3-setuptools-whl,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
  ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/python"   # as the official python images have it
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" -c . | podman import - "$base" >/dev/null
  rm -rf "$rootfs"
fi

# This machine's way to PyPI may need its own certificate authority: pass the host's bundle.
podman build --isolation chroot -q \
  -v /etc/ssl/certs/ca-certificates.crt:/host-ca.crt:ro --build-arg PIP_CERT=/host-ca.crt \
  --build-arg BASE="$base" -t "$image" . >/dev/null

# Run it as the image says (user 10001, entrypoint pbxmesh) on its read-only file system.
user=$(podman image inspect "$image" --format '{{.Config.User}}')
root=$(podman image mount "$image")
trap 'podman image umount "$image" >/dev/null' EXIT
[ "$user" = "10001:10001" ] || { echo "image user is $user, not 10001:10001"; exit 1; }
chroot --userspec="$user" "$root" /opt/pbxmesh/bin/pbxmesh --help | head -1
chroot --userspec="$user" "$root" /opt/pbxmesh/bin/python -c "import services.sipgw.app, services.callstate.app, services.registry.app, services.media.worker, grpc, etcd3aio, uvloop; print('imports ok')"
echo "image $image: built and runs ($(podman image inspect "$image" --format '{{.Size}}') bytes)"
