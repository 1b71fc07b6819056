#!/usr/bin/env bash
# The whole suite under ThreadSanitizer and AddressSanitizer, each in its own build folder, against a private
# redis-server. Usage: scripts/test-sanitize.sh [thread|address]...   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
sanitizers=("$@")
[ ${#sanitizers[@]} -gt 0 ] || sanitizers=(thread address)
for sanitizer in "${sanitizers[@]}"; do
  echo "== swift test --sanitize=$sanitizer" >&2
  swift build --build-tests --sanitize="$sanitizer" --scratch-path ".build-$sanitizer"
  # halt_on_error: a report fails the run. detect_leaks stays off: the Swift runtime's own caches look like leaks.
  # The TSan suppressions file names the upstream issue behind each entry.
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/scripts/tsan-suppressions.txt" \
    ASAN_OPTIONS="halt_on_error=1 detect_leaks=0" \
    scripts/with-redis.sh swift test --skip-build --sanitize="$sanitizer" --scratch-path ".build-$sanitizer"
done
