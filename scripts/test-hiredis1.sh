#!/usr/bin/env bash
# Builds and tests the package against hiredis 1.x as well as the system's hiredis (0.14 on Debian bookworm):
# 1.2.0, what Ubuntu 24.04 and Debian 13 ship (no limit on reply nesting), and the newest 1.x (Homebrew's line).
# Each comes from the C sources vendored in a PyPI `hiredis` sdist, compiled into a private prefix; nothing is
# installed system-wide. Skips a version (saying so) when PyPI cannot be reached.
#   scripts/test-hiredis1.sh [swift test arguments...]
#   HIREDIS1_SDISTS="hiredis>=3,<4" scripts/test-hiredis1.sh     # one version only
set -euo pipefail
cd "$(dirname "$0")/.."

root=${HIREDIS1_DIR:-.build-hiredis1}
read -r -a sdists <<< "${HIREDIS1_SDISTS:-hiredis>=2.4,<3 hiredis>=3,<4}"
for sdist in "${sdists[@]}"; do
  label=$(echo "$sdist" | tr -c 'a-zA-Z0-9.\n' '_')
  work="$root/$label"
  prefix="$PWD/$work/prefix"
  if [ ! -f "$prefix/lib/pkgconfig/hiredis.pc" ]; then
    mkdir -p "$work/src"
    if ! python3 -m pip download --quiet --no-deps --no-binary :all: "$sdist" -d "$work/src" >/dev/null 2>&1; then
      echo "test-hiredis1: SKIPPED $sdist, cannot download the hiredis sdist from PyPI" >&2
      continue
    fi
    tar -xzf "$work"/src/hiredis-*.tar.gz -C "$work/src"
    src=$(echo "$work"/src/hiredis-*/vendor/hiredis)
    mkdir -p "$prefix/lib/pkgconfig" "$prefix/include/hiredis"
    # async.c includes dict.c itself; ssl.c is left out (no TLS).
    (cd "$src" && cc -O2 -fPIC -shared -std=c99 -D_GNU_SOURCE alloc.c async.c hiredis.c net.c read.c sds.c sockcompat.c \
       -o "$prefix/lib/libhiredis.so")
    cp "$src"/{hiredis.h,async.h,read.h,sds.h,alloc.h} "$prefix/include/hiredis/"
    version=$(awk '/define HIREDIS_(MAJOR|MINOR|PATCH)/ {printf "%s%s", sep, $3; sep="."}' "$src/hiredis.h")
    printf 'Name: hiredis\nDescription: hiredis from the PyPI sdist\nVersion: %s\nLibs: -L%s/lib -lhiredis\nCflags: -I%s/include\n' \
      "$version" "$prefix" "$prefix" > "$prefix/lib/pkgconfig/hiredis.pc"
  fi
  # SwiftPM passes a .pc file's -I even for a system directory: the system's openssl.pc (-I/usr/include) would put
  # the system's hiredis headers (0.14) ahead of these. This one links the same OpenSSL and adds no include path.
  openssl_includes=$(pkg-config --variable=includedir openssl 2>/dev/null || true)
  if [ ! -f "$prefix/lib/pkgconfig/openssl.pc" ] && [ -n "$openssl_includes" ] && [ -d "$openssl_includes/hiredis" ]; then
    printf 'Name: OpenSSL\nDescription: the system OpenSSL, without include path\nVersion: %s\nLibs: %s\nCflags:\n' \
      "$(pkg-config --modversion openssl)" "$(pkg-config --libs openssl)" > "$prefix/lib/pkgconfig/openssl.pc"
  fi
  echo "test-hiredis1: hiredis $(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --modversion hiredis)" >&2
  (
    export PKG_CONFIG_PATH="$prefix/lib/pkgconfig" LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    swift build --build-tests --scratch-path "$work/build"
    scripts/with-redis.sh swift test --skip-build --scratch-path "$work/build" "$@"
  )
done
