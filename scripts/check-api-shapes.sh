#!/usr/bin/env bash
# Type-checks Tests/APIShapes against the built RedisPubSub module: MustCompile.swift must compile, and in
# MustNotCompile.swift exactly the lines marked `// error` must fail. Run after `swift build` (make test does).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(swift build --show-bin-path)
modules="$bin/Modules"
[ -d "$modules" ] || modules="$bin"
# The C modules the library imports (their module maps, and the headers' own include paths).
flags=(-typecheck -I "$modules" -I Sources/CHiredis -I Sources/COpenSSL
    $(pkg-config --cflags-only-I hiredis openssl 2>/dev/null | sed 's/-I/-Xcc -I/g'))

if ! out=$(swiftc "${flags[@]}" Tests/APIShapes/MustCompile.swift 2>&1); then
    echo "$out" | grep -E "error:" >&2 || echo "$out" >&2
    echo "check-api-shapes: Tests/APIShapes/MustCompile.swift does not compile" >&2
    exit 1
fi

expected=$(grep -nE '^ *[^/ ].*// error' Tests/APIShapes/MustNotCompile.swift | cut -d: -f1 | sort -n | uniq)
out=$(swiftc "${flags[@]}" Tests/APIShapes/MustNotCompile.swift 2>&1 || true)
actual=$(echo "$out" | grep -E '^[^ ]*MustNotCompile\.swift:[0-9]+:[0-9]+: error:' | cut -d: -f2 | sort -n | uniq)
if [ "$expected" != "$actual" ]; then
    echo "check-api-shapes: the lines of Tests/APIShapes/MustNotCompile.swift that fail are not the ones marked // error" >&2
    echo "marked:  $(echo $expected)" >&2
    echo "failing: $(echo $actual)" >&2
    echo "$out" | grep -E "error:" >&2 || true
    exit 1
fi
echo "check-api-shapes: $(echo "$expected" | wc -l) traps refused, the intended shapes compile"
