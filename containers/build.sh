#!/usr/bin/env bash
# Build the resnet-repro container images with podman. Idempotent: every step
# is skipped when its result is already there, so a second run on the same
# machine only rebuilds what changed (podman's layer cache does the rest).
#
#   containers/build.sh                 # install podman if needed, build train + render
#   IMAGES=train containers/build.sh    # only the training image
#
# Environment (all optional):
#   IMAGES               images to build, default "train render"
#   PIP_SOURCE           wheelhouse (default) | index: where torch/torchvision come from
#   WHEELHOUSE           wheel folder inside containers/, default wheelhouse
#   EXTRA_CA_CERTS       host folder whose *.crt files are copied into the images' trust
#                        store (default /usr/local/share/ca-certificates; empty = none)
#   BASE_IMAGE           base for every image, default localhost/resnet-repro-base:bookworm,
#                        built here from Debian packages with debootstrap when missing
#   DEBIAN_MIRROR        mirror for debootstrap, default http://deb.debian.org/debian
#   PODMAN_BUILD_ARGS    extra arguments for `podman build` (e.g. "--no-cache")
#
# The image version is read from containers/VERSION (the only place to bump it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
context="$(cd "$here/.." && pwd)"
version="$(tr -d ' \n' <"$here/VERSION")"
images="${IMAGES:-train render}"
pip_source="${PIP_SOURCE:-wheelhouse}"
wheelhouse="${WHEELHOUSE:-wheelhouse}"
extra_ca="${EXTRA_CA_CERTS-/usr/local/share/ca-certificates}"
default_base="localhost/resnet-repro-base:bookworm"
base_image="${BASE_IMAGE:-$default_base}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
missing=0

log() { printf '[containers/build.sh] %s\n' "$*" >&2; }
die() { printf '[containers/build.sh] ERROR: %s\n' "$*" >&2; exit 1; }

case "$pip_source" in wheelhouse|index) ;; *) die "PIP_SOURCE must be 'wheelhouse' or 'index', not '$pip_source'";; esac
[[ "$version" =~ ^[0-9A-Za-z][0-9A-Za-z._-]*$ ]] || die "containers/VERSION holds no valid tag: '$version'"

apt_install() {
    # Another apt/dpkg may be running (CI installs other things in parallel): wait for its lock.
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -q)
    "${apt[@]}" update >/dev/null
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "$@" >/dev/null
}

# 1. podman, runc and debootstrap --------------------------------------------------
need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
if [[ "$base_image" == "$default_base" ]] && ! command -v debootstrap >/dev/null; then need+=(debootstrap); fi
if ((${#need[@]})); then
    [[ $EUID -eq 0 ]] || die "podman is missing and installing it needs root: apt-get install ${need[*]}"
    command -v apt-get >/dev/null || die "podman is missing and there is no apt-get to install it"
    log "installing ${need[*]}"
    apt_install "${need[@]}" || die "apt-get install ${need[*]} failed"
fi

# 2. containers.conf: crun refuses this machine's hybrid cgroup layout, so use runc; the
#    default nofile/nproc limits are above what the sandbox allows. Never overwrite one.
conf=/etc/containers/containers.conf
if [[ ! -e "$conf" && $EUID -eq 0 ]]; then
    log "writing $conf"
    mkdir -p /etc/containers
    cat >"$conf" <<'EOF'
# written by resnet-repro containers/build.sh
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
fi

# 2b. disk: a first build of the training image needs about 14 GiB (the wheelhouse, the layers, pip's unpacking);
#     say so before starting rather than fail in the middle with "no space left on device".
storage="$(podman info --format '{{.Store.GraphRoot}}' 2>/dev/null || echo /var/lib/containers/storage)"
mkdir -p "$storage"
if [[ " $images " == *" train "* ]] && ! podman image exists "localhost/resnet-repro-train:$version"; then
    free_gib=$(( $(df -Pk "$storage" | awk 'NR == 2 {print $4}') / 1048576 ))
    ((free_gib >= ${MIN_FREE_GIB:-14})) \
        || die "building the training image needs about ${MIN_FREE_GIB:-14} GiB free for $storage; only $free_gib GiB are"
fi

# 3. base image: Debian bookworm from Debian's own packages (no registry needed) ----
if ! podman image exists "$base_image"; then
    [[ "$base_image" == "$default_base" ]] || die "base image $base_image is not present; pull it first (podman pull $base_image)"
    log "building $base_image with debootstrap from $mirror (once; kept in podman's storage)"
    t0=$SECONDS
    rootfs="$(mktemp -d /var/tmp/resnet-repro-rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
        || { tail -20 "$rootfs.log" >&2; die "debootstrap failed (log above)"; }
    rm -f "$rootfs.log"
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
EOF
    # Keep the image small and the same as Debian's docker images: no apt caches, no docs.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
    created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    tar -C "$rootfs" -c . | podman import --quiet \
        --change 'CMD ["/bin/bash"]' \
        --change "LABEL org.opencontainers.image.description=\"Debian bookworm minbase (debootstrap from $mirror)\"" \
        --change "LABEL org.opencontainers.image.created=$created" \
        - "$base_image" >/dev/null
    rm -rf "$rootfs"; trap - EXIT
    log "base image built in $((SECONDS - t0)) s"
fi

# 4. extra CA certificates (corporate TLS proxies): copied into the build context --
certs_dir="$here/ca-certs"
find "$certs_dir" -maxdepth 1 -name '*.crt' -delete
if [[ -n "$extra_ca" && -d "$extra_ca" ]]; then
    find "$extra_ca" -maxdepth 2 -name '*.crt' -exec cp {} "$certs_dir/" \;
fi
log "extra CA certificates: $(find "$certs_dir" -maxdepth 1 -name '*.crt' | wc -l) file(s) from ${extra_ca:-nowhere}"

# 5. wheelhouse: torch + torchvision and their dependencies, exactly as locked ------
#    (pip download skips wheels already there, so a warm wheelhouse costs seconds)
if [[ "$pip_source" == wheelhouse && " $images " == *" train "* ]]; then
    mkdir -p "$here/$wheelhouse"
    while read -r pin; do
        name="${pin%%==*}"; ver="${pin#*==}"
        compgen -G "$here/$wheelhouse/${name//-/_}-${ver}-*.whl" >/dev/null \
            || compgen -G "$here/$wheelhouse/${name}-${ver}-*.whl" >/dev/null || missing=$((missing + 1))
    done < <(grep -E '^[A-Za-z0-9]' "$here/requirements-torch.lock")
fi
if [[ "$pip_source" == wheelhouse && " $images " == *" train "* && $missing -eq 0 ]]; then
    log "wheelhouse: every wheel of containers/requirements-torch.lock is in containers/$wheelhouse"
elif [[ "$pip_source" == wheelhouse && " $images " == *" train "* ]]; then
    log "wheelhouse: pip download -r containers/requirements-torch.lock into containers/$wheelhouse"
    t0=$SECONDS
    # The host's pip picks wheels for its own interpreter: it must match the image's (CPython 3.11
    # on x86_64 glibc), else use PIP_SOURCE=index.
    python3 -c 'import sys, platform; sys.exit(sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64")' \
        || die "the wheelhouse needs a host python3 that is CPython 3.11 on x86_64 (or use PIP_SOURCE=index)"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        -r "$here/requirements-torch.lock" -d "$here/$wheelhouse" 2>&1 \
        | grep -v 'is ignored: it is neither a file nor a directory' >&2 || true
    ls "$here/$wheelhouse"/torch-*.whl >/dev/null 2>&1 || die "pip download left no torch wheel in containers/$wheelhouse"
    log "wheelhouse ready in $((SECONDS - t0)) s ($(du -sh "$here/$wheelhouse" | cut -f1))"
fi

# 6. the images (podman's output, on stdout, gets a time stamp per line for the CI log) --
#    SOURCE_SHA256 hashes what the package layer copies (src/, pyproject.toml, README.md), so
#    any change to the package source rebuilds that layer, and the image's label
#    org.resnet-repro.source-sha256 says which source it holds. The tests compute the same
#    hash (tests/conftest_containers.py: source_sha256) and refuse a stale image.
source_sha256="$(
    cd "$context"
    { find src -type f ! -path '*/__pycache__/*' ! -name '*.py[co]' -print0
      for f in pyproject.toml README.md; do if [[ -f "$f" ]]; then printf '%s\0' "$f"; fi; done
    } | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
)"
log "package source sha256 $source_sha256"
for name in $images; do
    dockerfile="containers/Dockerfile.$name"
    tag="localhost/resnet-repro-$name:$version"
    [[ -f "$context/$dockerfile" ]] || die "no $dockerfile"
    log "building $tag from $dockerfile"
    t0=$SECONDS
    set +e
    # shellcheck disable=SC2086
    podman build --layers --force-rm --format docker \
        -f "$context/$dockerfile" -t "$tag" \
        --build-arg BASE_IMAGE="$base_image" \
        --build-arg PIP_SOURCE="$pip_source" \
        --build-arg WHEELHOUSE="$wheelhouse" \
        --build-arg EXTRA_CA_CERTS_DIR=containers/ca-certs \
        --build-arg SOURCE_SHA256="$source_sha256" \
        --label org.opencontainers.image.version="$version" \
        ${PODMAN_BUILD_ARGS:-} "$context" 2>&1 \
        | while IFS= read -r line; do printf '%(%H:%M:%S)T %s\n' -1 "$line"; done
    rc=${PIPESTATUS[0]}
    set -e
    if ((rc != 0)); then
        die "building $tag from $dockerfile failed (podman build exit $rc); the podman output above names the failing instruction"
    fi
    log "built $tag in $((SECONDS - t0)) s"
done

# 7. disk: earlier builds of these images, now untagged, go (each holds a package layer). --force-rm above
#    already removes a failed build's working container, which would otherwise pin gigabytes of layers.
podman image prune --force --filter label=org.resnet-repro.source-sha256 >/dev/null 2>&1 || true
