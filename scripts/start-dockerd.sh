#!/usr/bin/env bash
# Start the Docker daemon if it is not answering yet, then wait (bounded) until it does.
# CI runs this as root on a machine where Debian's docker.io is installed but no init system starts it.
# Env: DOCKERD_LOG (default /tmp/dockerd.log), DOCKERD_WAIT_SECONDS (default 60).
set -euo pipefail

log_file="${DOCKERD_LOG:-/tmp/dockerd.log}"
wait_seconds="${DOCKERD_WAIT_SECONDS:-60}"
# The engine is 20.10 (API 1.41) while the preinstalled CLI may be newer: make the CLI speak the engine's version.
export DOCKER_API_VERSION="${DOCKER_API_VERSION:-1.41}"

engine_answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if engine_answers; then
    echo "dockerd already running (engine $(docker version --format '{{.Server.Version}}'))"
    exit 0
fi

command -v dockerd >/dev/null || { echo "dockerd not installed: apt-get install -y docker.io" >&2; exit 1; }
echo "starting dockerd (log: $log_file)"
nohup dockerd >"$log_file" 2>&1 &
echo "dockerd pid $!"

for _ in $(seq "$wait_seconds"); do
    if engine_answers; then
        echo "dockerd answers (engine $(docker version --format '{{.Server.Version}}'))"
        exit 0
    fi
    sleep 1
done
echo "dockerd did not answer within ${wait_seconds}s; last log lines:" >&2
tail -n 20 "$log_file" >&2
exit 1
