#!/usr/bin/env bash
# The notifications demo on a private Redis Cluster (3 primaries with a replica each, on loopback): a subscriber of
# the sharded channel "notifications" and a publisher sending to it with SPUBLISH. Halfway through, the channel's slot
# is migrated to another primary, and later that primary is failed over to its replica: the subscriber follows both
# without a restart (its standard error says so) and receives the rest. Run through `make demo-cluster`.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${DEMO_COUNT:-9}
interval=${DEMO_INTERVAL:-1}
bin=$(swift build --show-bin-path)
dir=$(mktemp -d "${TMPDIR:-/tmp}/redis-pubsub-demo-cluster.XXXXXX")

sub_pid=""
pub_pid=""
cleanup() {
  for pid in "$sub_pid" "$pub_pid"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  scripts/redis-cluster.sh stop "$dir/cluster"
  rm -rf "$dir"
}
trap cleanup EXIT

echo "Starting a private Redis Cluster..."
scripts/redis-cluster.sh start "$dir/cluster" 3 1 1000 >/dev/null
seed=$(head -1 "$dir/cluster/nodes")
cli() { redis-cli -h 127.0.0.1 "$@"; }
slot=$(cli -p "${seed#*:}" cluster keyslot notifications)
owner_of_slot() {
  cli -p "${seed#*:}" cluster shards | awk -v s="$slot" '
    $0 == "slots" { getline lo; getline hi; inrange = (s >= lo && s <= hi) }
    $0 == "port" { getline p; port = p }
    $0 == "role" { getline r; if (r == "master" && inrange) { print port; exit } }'
}
echo "Cluster up: $(tr '\n' ' ' < "$dir/cluster/nodes"); 'notifications' is in slot $slot on port $(owner_of_slot)"

fifo=$(mktemp -u "$dir/fifo.XXXXXX")
mkfifo "$fifo"
"$bin/subscriber" --cluster --url "redis://$seed" --shard-channel notifications --count "$count" > "$fifo" 2>&1 &
sub_pid=$!
exec 3< "$fifo"
# Wait for the acknowledgement before publishing (standard error's "connected to node" lines come first).
while IFS= read -r line <&3; do
  echo "[subscriber] $line"
  case "$line" in "Subscribed to"*) break ;; "error:"*) echo "the subscriber did not start" >&2; exit 1 ;; esac
done
( while IFS= read -r line; do echo "[subscriber] $line"; done <&3 ) &
reader=$!

# The publisher goes on until the subscriber has its messages (one sent inside a failover's gap may be lost: Pub/Sub).
"$bin/publisher" --cluster --url "redis://$seed" --shard --channel notifications --interval "$interval" \
  > >(sed -u 's/^/[publisher]  /') 2>&1 &
pub_pid=$!

sleep "$(awk -v i="$interval" -v c="$count" 'BEGIN { print i * c / 3 }')"
source=$(owner_of_slot)
target=""
for p in $(cut -d: -f2 "$dir/cluster/nodes"); do
  if [ "$p" != "$source" ] && [ "$(cli -p "$p" role | head -1)" = master ]; then target=$p; break; fi
done
echo "[demo]       migrating slot $slot from $source to $target"
source_id=$(cli -p "$source" cluster myid)
target_id=$(cli -p "$target" cluster myid)
cli -p "$target" cluster setslot "$slot" importing "$source_id" >/dev/null
cli -p "$source" cluster setslot "$slot" migrating "$target_id" >/dev/null
cli -p "$target" cluster setslot "$slot" node "$target_id" >/dev/null
cli -p "$source" cluster setslot "$slot" node "$target_id" >/dev/null

sleep "$(awk -v i="$interval" -v c="$count" 'BEGIN { print i * c / 3 }')"
replica=""
for p in $(cut -d: -f2 "$dir/cluster/nodes"); do
  if cli -p "$p" cluster nodes | awk -v id="$target_id" '/myself/ && $4 == id { found = 1 } END { exit !found }'; then
    replica=$p
    break
  fi
done
echo "[demo]       failing $target over to its replica $replica"
cli -p "$replica" cluster failover >/dev/null

wait "$sub_pid"
sub_pid=""
wait "$reader"
kill -INT "$pub_pid" 2>/dev/null || true
wait "$pub_pid" 2>/dev/null || true
pub_pid=""
echo "Done: $count messages received, through a slot migration and a failover."
