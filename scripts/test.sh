#!/usr/bin/env bash
# The whole test suite from a fresh machine: installs what is missing, then lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: real servers, exporters, a browser (command or file -> package).
declare -A needed=(
  [/usr/lib/postgresql/15/bin/postgres]=postgresql
  [redis-server]=redis-server
  [nginx]=nginx
  [prometheus]=prometheus
  [promtool]=prometheus
  [prometheus-alertmanager]=prometheus-alertmanager
  [amtool]=prometheus-alertmanager
  [wrk]=wrk
  [prometheus-redis-exporter]=prometheus-redis-exporter
  [prometheus-postgres-exporter]=prometheus-postgres-exporter
  [prometheus-nginx-exporter]=prometheus-nginx-exporter
  [/usr/bin/chromium]=chromium
  [/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf]=fonts-dejavu-core
)
missing=()
for command in "${!needed[@]}"; do
  if ! command -v "$command" >/dev/null 2>&1 && [ ! -e "$command" ]; then
    missing+=("${needed[$command]}")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy
python3 -m pytest -p no:cacheprovider "$@"
