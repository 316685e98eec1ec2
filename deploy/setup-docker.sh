#!/usr/bin/env bash
# Everything `python -m harness --isolation docker` needs, idempotently, as root on Debian:
#   1. Debian's docker.io and debootstrap (and docker-compose, for deploy/compose.yaml);
#   2. a running Docker daemon: the system's service where there is one, else `dockerd` started in the
#      background (its log in /var/log/localexit-dockerd.log) and waited for;
#   3. the base image: python:3.11-slim when BASE says so (a machine with a registry), else
#      localexit-base:bookworm from Debian's packages (deploy/build-base.sh; built once per machine);
#   4. wheels of the project and its runtime dependencies, made on the host with pip and the same
#      constraints as scripts/setup.sh (torch's CPU wheel from where the host's install takes it);
#   5. the node image (deploy/Dockerfile), tagged localexit-node:latest (LOCALEXIT_IMAGE overrides).
# Step 4 needs the project's virtual environment: scripts/setup.sh makes it first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${LOCALEXIT_IMAGE:-localexit-node:latest}
base=${BASE:-localexit-base:bookworm}
log() { printf 'setup-docker: %s\n' "$*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "error: run as root (Docker and the testbed need it)"; exit 2; }

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq </dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  if [ -d /run/systemd/system ] && systemctl start docker 2>/dev/null; then
    log "started the docker service"
  else
    # No service manager (a container, CI): the daemon runs in the background, detached from this shell
    # so that it outlives it, as a service would.
    log "starting dockerd (log: /var/log/localexit-dockerd.log)"
    setsid dockerd >>/var/log/localexit-dockerd.log 2>&1 </dev/null &
  fi
  for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { log "error: dockerd did not come up; see /var/log/localexit-dockerd.log"; tail -n 20 /var/log/localexit-dockerd.log >&2; exit 1; }
fi

if [ "$base" = localexit-base:bookworm ]; then
  LOCALEXIT_BASE=$base bash deploy/build-base.sh
fi

[ -x .venv/bin/python ] || bash scripts/setup.sh
log "building wheels of the project and its dependencies"
rm -f deploy/wheels/deps/*.whl deploy/wheels/project/*.whl
.venv/bin/python -m pip wheel -q --disable-pip-version-check -c constraints.txt \
  --wheel-dir deploy/wheels/deps . </dev/null 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
mv deploy/wheels/deps/localexit-*.whl deploy/wheels/project/

log "building $image on $base"
previous=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
docker build -q -f deploy/Dockerfile --build-arg "BASE=$base" -t "$image" . >/dev/null
# the image this build replaces, unless a container uses it, and the stage that copied the sources and
# wheels (each change of the code makes a new one); the dependencies' stage stays, the next build's cache
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then
  docker image rm "$previous" >/dev/null 2>&1 || true
fi
docker image prune --force --filter label=org.localexit.stage=wheels >/dev/null
log "$image ready: $(docker image inspect -f '{{.Id}}' "$image" | cut -c1-19), $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
