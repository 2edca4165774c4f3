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
python3 -m pytest -p no:cacheprovider "$@"
