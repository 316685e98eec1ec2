#!/usr/bin/env bash
# Set up everything localexit needs on a fresh Debian machine of this kind, idempotently:
#   - as root with apt: iproute2 (ip, tc: namespaces and shaping), dataset-fashion-mnist (the default data)
#     and openssh-server (sshd for the multi-host tests);
#   - a virtual environment at .venv with Python 3.11, the project with every extra (report, bench, test,
#     dev) installed in it.
# Installs go through constraints.txt: its exact torch keeps Python 3.11 on the local CPU wheel, never a
# CUDA build. The install is redone when pyproject.toml or constraints.txt changes.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

need_pkgs=()
command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 || need_pkgs+=(iproute2)
[ -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || need_pkgs+=(dataset-fashion-mnist)
# sshd for the multi-host tests (each "host" a namespace running its own; the service is never started)
[ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian packages: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" </dev/null >/dev/null
  else
    log "WARNING: missing ${need_pkgs[*]}; install them as root with apt-get (namespaces and the default dataset need them)"
  fi
fi

py=""
for candidate in python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    py=$candidate; break
  fi
done
[ -n "$py" ] || { log "error: Python 3.11 not found (python3.11 or python3)"; exit 2; }

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  log "creating .venv with $($py --version)"
  rm -rf .venv
  "$py" -m venv .venv
fi
stamp=.venv/.localexit-installed
want="$(sha256sum pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing the project and its dependencies into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip </dev/null
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,dev]' </dev/null
  echo "$want" > "$stamp"
fi
log "ready: $(.venv/bin/python --version), torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
