#!/usr/bin/env bash
# Build the CPU trial image that the Docker tests run, with no registry: a Debian bookworm root
# filesystem from debootstrap (python3 only) plus torch, numpy and safetensors installed by this machine's
# pip, at the versions PYTHON has, then `docker import`ed.
#
#   tests/build_test_image.sh IMAGE [PYTHON]
#
# Does nothing when IMAGE exists. The root filesystem is kept under $ARENA_ROOTFS_CACHE (default
# ~/.cache/autoresearch-arena/docker-rootfs), keyed by the torch, numpy and safetensors versions, so rebuilding a
# removed image only re-imports it. Needs root (debootstrap), a running engine, Debian's mirror and pip.
set -euo pipefail

image=${1:?usage: $0 IMAGE [PYTHON]}
python=${2:-python3}
mirror=${ARENA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${ARENA_ROOTFS_CACHE:-$HOME/.cache/autoresearch-arena/docker-rootfs}

if docker image inspect "$image" >/dev/null 2>&1; then
    exit 0
fi
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9  # one builder at a time; a second test session waits, then finds the image

if docker image inspect "$image" >/dev/null 2>&1; then
    exit 0
fi
torch_version=$("$python" -c 'import torch; print(torch.__version__)')
numpy_version=$("$python" -c 'import numpy; print(numpy.__version__)')
safetensors_version=$("$python" -c 'import safetensors; print(safetensors.__version__)')
rootfs=$cache/bookworm-torch$torch_version-numpy$numpy_version-safetensors$safetensors_version

if [ ! -d "$rootfs" ]; then
    [ "$(id -u)" = 0 ] || { echo "building $image needs root (debootstrap); build it as root once" >&2; exit 1; }
    command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }
    partial=$rootfs.partial
    rm -rf "$partial"
    echo "debootstrap bookworm (minbase + python3) into $partial" >&2
    debootstrap --variant=minbase --include=python3 bookworm "$partial" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    echo "pip install torch==$torch_version numpy==$numpy_version safetensors==$safetensors_version into the root filesystem" >&2
    # bookworm's python3 is 3.11: ask pip for 3.11 wheels whatever Python runs pip
    "$python" -m pip install -q --no-cache-dir --no-warn-conflicts --only-binary=:all: --python-version 3.11 \
        --target "$partial/usr/local/lib/python3.11/dist-packages" "torch==$torch_version" "numpy==$numpy_version" \
        "safetensors==$safetensors_version"
    rm -rf "$partial"/var/cache/apt/archives/*.deb "$partial"/var/lib/apt/lists/* "$partial"/usr/share/doc \
        "$partial"/usr/share/man
    mkdir -p "$partial/trial"
    mv "$partial" "$rootfs"
fi

echo "docker import $rootfs as $image" >&2
tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
    --change 'WORKDIR /trial' \
    --change 'CMD ["python3"]' \
    - "$image" >/dev/null
if ! docker run --rm --network none "$image" python3 -c 'import numpy, torch, safetensors' >&2; then
    docker image rm "$image" >/dev/null
    echo "the imported image cannot import torch, numpy and safetensors; delete $rootfs and build again" >&2
    exit 1
fi
# older builds of this image (another recipe or torch) are dead weight of a gigabyte each
docker images "${image%%:*}" --format '{{.Repository}}:{{.Tag}}' | { grep -vxF "$image" || true; } \
    | xargs -r docker image rm >/dev/null
