#!/usr/bin/env bash
# Build the local base image localexit-base:bookworm from Debian's packages, for machines that cannot
# pull python:3.11-slim from a registry: debootstrap a minimal bookworm (python3, python3-venv for the
# project's virtual environment, iproute2 for ip and tc inside the containers, dataset-fashion-mnist for
# the default data), trim what a node never reads (documentation, manuals, translations, apt's caches,
# the dataset's training split) and `docker import` it.
#
# The image carries a label with the hash of this script: an image of the same tag built by another
# version of the recipe is rebuilt, an image of this one is reused (so a machine builds it once; nothing
# depends on that cache being there). `--force` rebuilds regardless.
set -euo pipefail
cd "$(dirname "$0")"

tag=${LOCALEXIT_BASE:-localexit-base:bookworm}
recipe=$(sha256sum build-base.sh | cut -c1-16)
log() { printf 'build-base: %s\n' "$*" >&2; }

if [ "${1:-}" != --force ] &&
   [ "$(docker image inspect -f '{{ index .Config.Labels "org.localexit.base-recipe" }}' "$tag" 2>/dev/null)" = "$recipe" ]; then
  log "$tag is up to date"
  exit 0
fi
command -v debootstrap >/dev/null || { log "error: debootstrap is not installed (apt-get install debootstrap)"; exit 2; }

old=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
root=$(mktemp -d /var/tmp/localexit-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
log "debootstrap bookworm into $root (about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv,iproute2,dataset-fashion-mnist bookworm "$root" >"$root.log" 2>&1 || {
  tail -n 20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
  "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/log/* \
  "$root"/usr/share/datasets/fashion-mnist/train-*
log "importing it as $tag"
tar -C "$root" --numeric-owner -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL org.localexit.base-recipe=$recipe" \
  --change 'CMD ["python3"]' \
  - "$tag" >/dev/null
# the image this one replaces, unless something still uses it
[ -z "$old" ] || docker image rm "$old" >/dev/null 2>&1 || true
log "$tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
