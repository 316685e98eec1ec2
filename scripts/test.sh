#!/usr/bin/env bash
# The whole test suite: lint, format, types, the Docker image (as root), then pytest. Exits non-zero if
# anything fails or if pytest ran no test at all (its exit code 5), so an empty run never counts as green.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
echo "== ruff check"; $py -m ruff check .
echo "== ruff format --check"; $py -m ruff format --check .
echo "== mypy"; $py -m mypy
# As root, the tests marked `docker` need the Docker daemon and the node image: deploy/setup-docker.sh
# installs Debian's docker.io, starts dockerd and builds the image (idempotent; cached on the machine).
# LOCALEXIT_NO_DOCKER=1 skips that step (those tests then skip with a reason).
if [ "$(id -u)" -eq 0 ] && [ "${LOCALEXIT_NO_DOCKER:-0}" != 1 ]; then
  echo "== docker (deploy/setup-docker.sh)"; bash deploy/setup-docker.sh
fi
echo "== pytest"
set +e
$py -m pytest "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit $rc
