#!/usr/bin/env bash
# Runs a command with a private, throw-away redis-server: a free loopback port, its own temporary directory,
# REDIS_URL pointing at it. The server is stopped when the command ends, also on failure or Ctrl-C.
# It never touches any other Redis server.
#   scripts/with-redis.sh swift test
set -euo pipefail

dir=$(mktemp -d "${TMPDIR:-/tmp}/redis-pubsub.XXXXXX")
pid=""
# Servers the test suite started for itself live in ${TMPDIR}/redis-pubsub-test-*; if the suite crashed, they are
# orphans (parent PID 1). Only those are swept: never a server this project did not start.
sweep_orphans() {
  local p cwd
  for p in $(pgrep -x redis-server 2>/dev/null || true); do
    [ "$(ps -o ppid= -p "$p" 2>/dev/null | tr -d ' ')" = 1 ] || continue
    cwd=$(readlink "/proc/$p/cwd" 2>/dev/null || true)
    case "$cwd" in "${TMPDIR:-/tmp}"/redis-pubsub-test-*) kill -9 "$p" 2>/dev/null && rm -rf "$cwd" ;; esac
  done
}

cleanup() {
  sweep_orphans
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for _ in $(seq 20); do
  port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    --logfile "$dir/redis.log" --daemonize no >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    if redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1; then break 2; fi
    kill -0 "$pid" 2>/dev/null || break   # port taken: try another
    sleep 0.05
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
done
[ -n "$pid" ] || { echo "could not start redis-server (see $dir/redis.log)" >&2; exit 1; }

export REDIS_URL="redis://127.0.0.1:$port"
echo "redis-server $(redis-server --version | awk '{print $3}') on $REDIS_URL (pid $pid)" >&2
set +e
"$@"
status=$?
exit $status
