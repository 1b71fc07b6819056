#!/usr/bin/env bash
# A private Redis Cluster on loopback, for the tests and `make demo-cluster`: every node in its own directory under
# DIR, on free ports whose cluster-bus ports (port + 10000) are free too. It never touches a server it did not start.
#
#   scripts/redis-cluster.sh start DIR [PRIMARIES [REPLICAS_PER_PRIMARY [NODE_TIMEOUT_MS]]]
#       starts PRIMARIES (3) primaries with REPLICAS_PER_PRIMARY (1) replicas each, creates the cluster, waits until
#       every node reports cluster_state:ok and every replica is in sync, then prints one line per node,
#       "host:port", primaries first, and writes the same lines to DIR/nodes.
#   scripts/redis-cluster.sh start-node DIR PORT
#       starts the node of DIR/PORT again (after a kill -9) with its old configuration, and waits until it answers.
#   scripts/redis-cluster.sh stop DIR
#       kills every node started under DIR and removes DIR.
#
# Extra redis-server arguments for every node may be given in REDIS_CLUSTER_ARGS (e.g. "--requirepass pw
# --masterauth pw"); REDIS_CLUSTER_CLI_ARGS are passed to redis-cli (e.g. "-a pw"). With REDIS_CLUSTER_TLS_DIR (a
# directory holding server.crt, server.key and ca.crt, as scripts/make-test-certs.sh makes them), every node speaks
# TLS only: clients, the cluster bus and replication (client certificates optional).
set -euo pipefail

usage() { sed -n '2,16p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
command=$1
dir=$2
read -r -a server_args <<<"${REDIS_CLUSTER_ARGS:-}"
read -r -a cli_args <<<"${REDIS_CLUSTER_CLI_ARGS:-}"

tls_dir=${REDIS_CLUSTER_TLS_DIR:-}
if [ -n "$tls_dir" ]; then
  tls_args=(--tls-cluster yes --tls-replication yes --tls-auth-clients optional --tls-cert-file "$tls_dir/server.crt"
    --tls-key-file "$tls_dir/server.key" --tls-ca-cert-file "$tls_dir/ca.crt")
  cli_args+=(--tls --cacert "$tls_dir/ca.crt")
fi

cli() { redis-cli --no-auth-warning "${cli_args[@]}" "$@"; }

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts the node of $dir/$1 (its nodes.conf, if any, is kept); returns non-zero if it does not answer within 5 s.
run_node() {
  local port=$1 node="$dir/$1"
  mkdir -p "$node"
  local port_args=(--port "$port")
  [ -z "$tls_dir" ] || port_args=(--port 0 --tls-port "$port" "${tls_args[@]}")
  redis-server "${port_args[@]}" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file nodes.conf \
    --cluster-node-timeout "${node_timeout:-2000}" --save "" --appendonly no --repl-diskless-sync-delay 0 --daemonize yes \
    --dir "$node" --pidfile "$node/redis.pid" --logfile "$node/redis.log" "${server_args[@]}" >/dev/null
  for _ in $(seq 100); do
    # Ours only: the server answering must be the one whose pid our node wrote (another may have taken the port).
    if [ -f "$node/redis.pid" ] && cli -h 127.0.0.1 -p "$port" info server 2>/dev/null | tr -d '\r' \
        | grep -qx "process_id:$(cat "$node/redis.pid")"; then
      return 0
    fi
    sleep 0.05
  done
  return 1
}

stop_node() {
  local pidfile="$dir/$1/redis.pid" pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  # Only a redis-server whose working directory is this node's: never another process that got the pid.
  if [ "$(readlink "/proc/$pid/cwd" 2>/dev/null || true)" = "$(cd "$dir/$1" && pwd -P)" ]; then
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
  || { echo "redis-server and redis-cli are needed (make installs them)" >&2; exit 1; }
version=$(redis-server --version | sed -n 's/.* v=\([0-9]*\).*/\1/p')
[ "${version:-0}" -ge 7 ] || { echo "Redis 7 or later is needed (sharded Pub/Sub, CLUSTER SHARDS)" >&2; exit 1; }

case "$command" in
start)
  primaries=${3:-3}
  replicas=${4:-1}
  node_timeout=${5:-2000}
  total=$(( primaries * (1 + replicas) ))
  mkdir -p "$dir"
  echo "$node_timeout" >"$dir/node-timeout"
  ports=()
  # On any failure from here on, the nodes started so far are stopped: nothing is left running.
  trap 'status=$?; if [ $status -ne 0 ]; then for p in "${ports[@]}"; do stop_node "$p"; done; fi' EXIT
  attempts=0
  while [ ${#ports[@]} -lt "$total" ]; do
    attempts=$(( attempts + 1 ))
    [ $attempts -le $(( total * 10 )) ] || { echo "could not start $total nodes (see $dir/*/redis.log)" >&2; exit 1; }
    # Below the kernel's ephemeral range (Linux 32768-60999, macOS 49152-65535) with the bus port too, so a node
    # never takes a port another test was just given by bind(0).
    port=$(( 10000 + (RANDOM * 32768 + RANDOM) % 12700 ))
    port_taken "$port" && continue
    port_taken $(( port + 10000 )) && continue
    for p in "${ports[@]}"; do [ "$p" != "$port" ] && [ "$p" != $(( port + 10000 )) ] || continue 2; done
    if run_node "$port"; then ports+=("$port"); else stop_node "$port"; rm -rf "${dir:?}/$port"; fi
  done
  addresses=()
  for p in "${ports[@]}"; do addresses+=("127.0.0.1:$p"); done
  cli --cluster create "${addresses[@]}" --cluster-replicas "$replicas" --cluster-yes >"$dir/create.log" 2>&1 \
    || { cat "$dir/create.log" >&2; exit 1; }
  # Every node agrees the cluster is up, and every replica has synchronised with its primary.
  deadline=$(( SECONDS + 30 ))
  until [ $SECONDS -ge $deadline ]; do
    ready=1
    for p in "${ports[@]}"; do
      info=$(cli -h 127.0.0.1 -p "$p" cluster info 2>/dev/null || true)
      case "$info" in *cluster_state:ok*) ;; *) ready=0; break ;; esac
      known=$(echo "$info" | tr -d '\r' | sed -n 's/^cluster_known_nodes://p')
      [ "$known" = "$total" ] || { ready=0; break; }
      # Every node's view agrees on the roles: as many replicas as were asked for (gossip may still lag).
      replicas_seen=$(cli -h 127.0.0.1 -p "$p" cluster nodes 2>/dev/null | awk '$3 ~ /slave/' | wc -l | tr -d ' ')
      [ "$replicas_seen" = $(( total - primaries )) ] || { ready=0; break; }
      role=$(cli -h 127.0.0.1 -p "$p" info replication 2>/dev/null | tr -d '\r' || true)
      case "$role" in *role:slave*) case "$role" in *master_link_status:up*) ;; *) ready=0; break ;; esac ;; esac
    done
    [ $ready = 1 ] && break
    sleep 0.1
  done
  [ $ready = 1 ] || { echo "the cluster in $dir did not come up" >&2; exit 1; }
  : >"$dir/nodes"
  for role in master slave; do
    for p in "${ports[@]}"; do
      if cli -h 127.0.0.1 -p "$p" info replication | tr -d '\r' | grep -qx "role:$role"; then
        echo "127.0.0.1:$p" | tee -a "$dir/nodes"
      fi
    done
  done
  ;;
start-node)
  [ $# -ge 3 ] || usage
  node_timeout=$(cat "$dir/node-timeout" 2>/dev/null || echo 2000)
  run_node "$3"
  ;;
stop)
  [ -d "$dir" ] || exit 0
  for node in "$dir"/*/; do
    [ -d "$node" ] && stop_node "$(basename "$node")"
  done
  rm -rf "$dir"
  ;;
*) usage ;;
esac
