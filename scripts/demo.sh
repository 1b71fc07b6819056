#!/usr/bin/env bash
# The notifications demo, both sides in one terminal: a subscriber and a publisher against a private redis-server.
# Run through `make demo`, which installs what is missing and builds first.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${DEMO_COUNT:-3}
interval=${DEMO_INTERVAL:-1}
bin=$(swift build --show-bin-path)

# Always a private server, even when REDIS_URL names another one.
if [ -z "${DEMO_PRIVATE_REDIS:-}" ]; then DEMO_PRIVATE_REDIS=1 exec scripts/with-redis.sh "$0" "$@"; fi

sub_pid=""
cleanup() { [ -n "$sub_pid" ] && kill "$sub_pid" 2>/dev/null || true; }
trap cleanup EXIT

fifo=$(mktemp -u "${TMPDIR:-/tmp}/redis-pubsub-demo.XXXXXX")
mkfifo "$fifo"
"$bin/subscriber" --count "$count" > "$fifo" 2>&1 &
sub_pid=$!
exec 3< "$fifo"
rm -f "$fifo"

# Wait for the acknowledgement before publishing, so no message is published before anyone listens.
IFS= read -r line <&3
echo "[subscriber] $line"
case "$line" in "Subscribed to"*) ;; *) echo "the subscriber did not start" >&2; exit 1 ;; esac
( while IFS= read -r line; do echo "[subscriber] $line"; done <&3 ) &
reader=$!

"$bin/publisher" --count "$count" --interval "$interval" | sed -u 's/^/[publisher]  /'
wait "$sub_pid"
sub_pid=""
wait "$reader"
echo "Done: $count messages published and received."
