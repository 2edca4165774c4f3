#!/usr/bin/env bash
# Installs with apt-get the Debian packages of scripts/debian-packages.txt whose command or
# file is missing. Commands are looked up in the absolute directories of PATH, files by their
# absolute path, never a name relative to the current directory (the checkout's own nginx/
# folder is not the nginx command).
#
#   scripts/debian-packages.sh [--print] [--root DIR]
#
# --print only prints the missing packages, one a line, sorted; --root DIR looks everything up
# under DIR as if it were / (a test's fake file system). Exits 2 on a malformed list entry.
set -euo pipefail

list="$(dirname "$0")/debian-packages.txt"
root=""
print=false
while [ $# -gt 0 ]; do
  case "$1" in
    --print) print=true ;;
    --root) root="${2%/}"; shift ;;
    *) echo "usage: $0 [--print] [--root DIR]" >&2; exit 2 ;;
  esac
  shift
done

# Is command $1 an executable file in one of PATH's absolute directories, under $root?
on_path() {
  local dir
  local IFS=:
  for dir in $PATH; do
    case "$dir" in
      /*) [ -f "$root$dir/$1" ] && [ -x "$root$dir/$1" ] && return 0 ;;
    esac
  done
  return 1
}

missing=()
while read -r needed package; do
  case "$needed" in
    "" | "#"*) continue ;;
    /*) [ -e "$root$needed" ] && continue ;;
    */*) echo "$list: $needed is neither a command name nor an absolute path" >&2; exit 2 ;;
    *) on_path "$needed" && continue ;;
  esac
  missing+=("$package")
done <"$list"

[ ${#missing[@]} -gt 0 ] || exit 0
packages=$(printf '%s\n' "${missing[@]}" | sort -u)
if $print; then
  echo "$packages"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages:" $packages
$sudo apt-get update -qq
# shellcheck disable=SC2086  # one argument per package
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $packages >/dev/null
