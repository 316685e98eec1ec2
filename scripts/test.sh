#!/usr/bin/env bash
# The whole test suite: lint, format, types, then pytest. Exits non-zero if anything fails or if
# pytest ran no test at all (its exit code 5), so an empty run never counts as green.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
echo "== ruff check"; $py -m ruff check .
echo "== ruff format --check"; $py -m ruff format --check .
echo "== mypy"; $py -m mypy
echo "== pytest"
set +e
$py -m pytest "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit $rc
