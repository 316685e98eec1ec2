#!/usr/bin/env bash
# Run tox across Python 3.10-3.13. On machines where the interpreters come from pyenv, only the global
# version's shims resolve and tox's discovery skips shims, so put the bin folders of the newest installed
# 3.10/3.11/3.12/3.13 on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v pyenv >/dev/null 2>&1; then
  versions=()
  for minor in 3.11 3.10 3.12 3.13; do
    v=$(pyenv versions --bare 2>/dev/null | grep -E "^${minor//./\\.}\.[0-9]+$" | sort -V | tail -n 1 || true)
    [ -n "$v" ] && versions+=("$(pyenv root)/versions/$v/bin")
  done
  if [ ${#versions[@]} -gt 0 ]; then
    PATH="$(IFS=:; echo "${versions[*]}"):$PATH"
    export PATH
  fi
fi
exec .venv/bin/tox "$@"
