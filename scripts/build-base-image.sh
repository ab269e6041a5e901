#!/usr/bin/env bash
# Build the local base images that tests and CI use, because no image can be pulled from a registry here:
#   novita-gpu-api/base:bookworm         Debian bookworm (minbase) + python3 + venv; base of app/Dockerfile
#   novita-gpu-api/valkey-test:bookworm  Debian bookworm (minbase) + redis-server; the dev stack's test Valkey image
#   novita-gpu-api/haproxy-test:bookworm Debian bookworm (minbase) + haproxy; the edge proxy's test image (users run
#                                        the official haproxy image; the tests run Debian's build of the same program)
#   novita-gpu-api/caddy-test:bookworm   Debian bookworm (minbase) + caddy + wget; the HTTPS front's test image (users
#                                        run the official caddy image, whose busybox wget the healthcheck also uses)
# Each image is built (debootstrap, then `docker import`) only when it is missing. The host CA bundle is copied in so
# that pip inside an image build can reach the package index.
# Env: DEBIAN_MIRROR (default http://deb.debian.org/debian), CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt).
set -euo pipefail

export DOCKER_API_VERSION="${DOCKER_API_VERSION:-1.41}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ca_bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
base_image="novita-gpu-api/base:bookworm"
valkey_image="novita-gpu-api/valkey-test:bookworm"
haproxy_image="novita-gpu-api/haproxy-test:bookworm"
caddy_image="novita-gpu-api/caddy-test:bookworm"

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# build_image <tag> <comma-separated packages> [docker import --change ...]
build_image() {
    local tag="$1" packages="$2"
    shift 2
    local rootfs started
    started=$(date +%s)
    rootfs="$(mktemp -d /tmp/rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs"' RETURN
    echo "building $tag: debootstrap bookworm minbase + $packages"
    debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
        || { tail -n 20 "$rootfs.log" >&2; exit 1; }
    rm -f "$rootfs.log"
    install -D -m 0644 "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    # Nothing in the image needs docs, man pages, locales or apt caches: drop them to keep the image small.
    rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/*
    tar -C "$rootfs" -c . | docker import "$@" - "$tag" >/dev/null
    echo "built $tag in $(( $(date +%s) - started ))s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
}

command -v debootstrap >/dev/null || { echo "debootstrap not installed: apt-get install -y debootstrap" >&2; exit 1; }
[ -r "$ca_bundle" ] || { echo "CA bundle $ca_bundle not readable (set CA_BUNDLE)" >&2; exit 1; }

if image_exists "$base_image"; then
    echo "$base_image already present: nothing to do"
else
    build_image "$base_image" "python3,python3-venv" \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]'
fi

if image_exists "$valkey_image"; then
    echo "$valkey_image already present: nothing to do"
else
    build_image "$valkey_image" "redis-server" \
        --change 'EXPOSE 6379' \
        --change 'CMD ["redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no"]'
fi

if image_exists "$haproxy_image"; then
    echo "$haproxy_image already present: nothing to do"
else
    # The official image's conventions: config at /usr/local/etc/haproxy/haproxy.cfg, runs as the haproxy user
    # (its STOPSIGNAL, SIGUSR1, is set by the program on the container; `docker import` cannot set it).
    build_image "$haproxy_image" "haproxy" \
        --change 'USER haproxy' \
        --change 'CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]'
fi

if image_exists "$caddy_image"; then
    echo "$caddy_image already present: nothing to do"
else
    # The program starts it with its own command (the rendered Caddyfile); this CMD only documents the image.
    build_image "$caddy_image" "caddy,wget" \
        --change 'ENV XDG_DATA_HOME=/data' --change 'ENV XDG_CONFIG_HOME=/config' \
        --change 'CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]'
fi
