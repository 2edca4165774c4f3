#!/usr/bin/env bash
# The whole test suite from a fresh machine: installs what is missing, then lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use (real servers, exporters, a browser), if missing.
bash scripts/debian-packages.sh

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy
# pytest under coverage, which follows every Python process the tests start (app instances,
# gunicorn master and workers, the CLI: setup.cfg [coverage:run]); the whole suite must reach
# [coverage:report] fail_under, a selection (arguments given) only reports.
export COVERAGE_FILE="$PWD/.coverage"
python3 -m coverage erase
python3 -m coverage run -m pytest -p no:cacheprovider "$@"
python3 -m coverage combine --quiet
if [ $# -eq 0 ]; then
  python3 -m coverage report
else
  python3 -m coverage report --fail-under=0
fi
