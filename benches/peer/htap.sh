#!/usr/bin/env bash
# HTAP: CH-benCHmark's analytical queries while TPC-C runs, detflow and PostgreSQL in one
# sitting on this machine (benches/README.md, "Issue 14").
#
#   bash benches/peer/htap.sh [--warehouses 8] [--duration 60] [--runs 3]
#                             [--detflow-clients 64] [--pg-clients 8] [--replication 1]
#                             [--no-build] [--skip-detflow] [--skip-postgres]
#
# For each system: the queries alone (each --runs times, one after another), the TPC-C
# new-order+payment mix alone for --duration seconds, then the same mix again while the
# queries run back to back, in turn, for the whole run. It prints per query its latency
# alone and under load, and the OLTP throughput without and with the analytical stream.
#
# detflow: a local 3-process cluster (fsync on, mutual TLS) loaded by `detflow demo --keep`
# and restarted from its folder; the mix driven by `detflow bench tpcc --connect`, the
# queries by `ch-queries` (one client, At::Latest, one consistent epoch per query).
# PostgreSQL: loaded by tpcc.sql, configured by postgresql.bench.conf (fsync on,
# SERIALIZABLE transactions), the mix by pgbench with synchronous_commit=off as in
# compare.sh, the queries by psql at REPEATABLE READ (one snapshot per query, as detflow's).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

W=8 D=60 RUNS=3 DCLIENTS=64 PCLIENTS=8 REPLICATION=1 BUILD=1 DO_DETFLOW=1 DO_PG=1
die() { echo "htap.sh: $*" >&2; exit 2; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
while [ $# -gt 0 ]; do
  case $1 in
    --warehouses) W=${2:?}; shift 2 ;;
    --duration) D=${2%s}; shift 2 ;;
    --runs) RUNS=${2:?}; shift 2 ;;
    --detflow-clients) DCLIENTS=${2:?}; shift 2 ;;
    --pg-clients) PCLIENTS=${2:?}; shift 2 ;;
    --replication) REPLICATION=${2:?}; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --skip-detflow) DO_DETFLOW=0; shift ;;
    --skip-postgres) DO_PG=0; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
for n in "$W" "$D" "$RUNS" "$DCLIENTS" "$PCLIENTS" "$REPLICATION"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "not a positive integer: $n"
done
[ "$D" -ge 20 ] || die "--duration must be at least 20 s (the analytical stream starts 5 s in)"

if [ "$BUILD" = 1 ]; then
  log "cargo build --release -p detflow-node -p detflow-benches"
  (cd "$ROOT" && cargo build --release -p detflow-node -p detflow-benches) >&2
fi
DETFLOW=$ROOT/target/release/detflow
CHQ=$ROOT/target/release/ch-queries
[ -x "$DETFLOW" ] && [ -x "$CHQ" ] || die "build detflow and ch-queries first (drop --no-build)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/detflow-htap.XXXXXX")
NODE_PIDS=() SERVER_UP=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "$SERVER_UP" = 1 ]; then
    "${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$TMP/pgdata" -m fast -w -t 60 stop >/dev/null 2>&1 || true
  fi
  wait 2>/dev/null || true
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT INT TERM

# A query's p50 over runs, from lines "NAME SECONDS".
p50() { sort -k2 -g | awk '{ v[NR] = $2 } END { if (NR) printf "%.3f", v[int((NR + 1) / 2)]; else printf "n/a" }'; }

# ------------------------------------------------------------------------------ detflow
if [ "$DO_DETFLOW" = 1 ]; then
  P=$((W < 8 ? W : 8))
  log "detflow: loading $W warehouses into $P partitions (replication $REPLICATION)"
  "$DETFLOW" demo --workload tpcc --warehouses "$W" --scale-down 1 --partitions "$P" \
    --replication "$REPLICATION" --clients 1 --duration 1s --keep "$TMP/cluster" >"$TMP/demo.log" 2>&1 \
    || { tail -20 "$TMP/demo.log" >&2; die "loading failed"; }
  # A query must finish within the snapshot retention (10 s by default); under load the
  # longest ran about 7 s, so give them a minute.
  for n in 1 2 3; do printf '\n[snapshots]\nretention_ms = 60000\n' >>"$TMP/cluster/node-$n.toml"; done
  GW=""
  for n in 1 2 3; do
    "$DETFLOW" node --config "$TMP/cluster/node-$n.toml" >"$TMP/node-$n.out" 2>&1 &
    NODE_PIDS+=($!)
    addr=$(sed -n 's/^listen = "\(.*\)"/\1/p' "$TMP/cluster/node-$n.toml")
    GW=${GW:+$GW,}$addr
  done
  CERTS=$TMP/cluster/certs/client
  for _ in $(seq 1 120); do
    if "$DETFLOW" status --connect "$GW" --certs "$CERTS" >/dev/null 2>&1; then break; fi
    sleep 1
  done
  "$DETFLOW" status --connect "$GW" --certs "$CERTS" >/dev/null || die "the cluster did not come up"
  bench() {
    "$DETFLOW" bench tpcc --connect "$GW" --certs "$CERTS" --warehouses "$W" \
      --mix new-order-payment --clients "$DCLIENTS" --duration "${D}s" --json 2>"$TMP/bench.err"
  }
  log "detflow: the queries alone, $RUNS runs each"
  "$CHQ" --connect "$GW" --certs "$CERTS" --runs "$RUNS" 2>&1 >/dev/null | tee "$TMP/d_alone.log" \
    | sed -n 's/^\(Q[0-9]*\): \([0-9.]*\) s, \([0-9]*\) rows.*/\1 \2 \3/p' >"$TMP/d_alone"
  log "detflow: TPC-C new-order+payment alone, $DCLIENTS clients, ${D}s"
  # The bench exits 1 when an audit band or condition 11 (which holds only right after
  # loading, and the demo ran a second) fails; its report still stands.
  bench >"$TMP/d_bench_alone.json" || true
  grep -q throughput "$TMP/d_bench_alone.json" || { tail -5 "$TMP/bench.err" >&2; die "detflow bench failed"; }
  D_OLTP=$(python3 -c 'import json,sys; print("%.0f" % json.load(open(sys.argv[1]))["throughput"])' "$TMP/d_bench_alone.json")
  log "detflow: the same with the queries back to back"
  { bench || true; } >"$TMP/d_bench_load.json" &
  bpid=$!
  sleep 5
  "$CHQ" --connect "$GW" --certs "$CERTS" --duration "$((D - 10))s" 2>&1 >/dev/null | tee "$TMP/d_load.log" \
    | sed -n 's/^\(Q[0-9]*\): \([0-9.]*\) s, \([0-9]*\) rows.*/\1 \2 \3/p' >"$TMP/d_load"
  wait "$bpid"
  D_HTAP=$(python3 -c 'import json,sys; print("%.0f" % json.load(open(sys.argv[1]))["throughput"])' "$TMP/d_bench_load.json")
  for p in "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait "${NODE_PIDS[@]}" 2>/dev/null || true
  NODE_PIDS=()
fi

# ------------------------------------------------------------------------------ PostgreSQL
if [ "$DO_PG" = 1 ]; then
  PGBIN=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V | tail -1)")
  [ -x "$PGBIN/initdb" ] || die "PostgreSQL not found (apt-get install -y postgresql)"
  RUNAS=()
  if [ "$(id -u)" -eq 0 ]; then
    id -u postgres >/dev/null 2>&1 || useradd --system --user-group --no-create-home postgres
    RUNAS=(runuser -u postgres --)
  fi
  chmod 777 "$TMP"
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  log "PostgreSQL: initdb, port $PORT"
  (cd "$TMP" && "${RUNAS[@]}" "$PGBIN/initdb" -D "$TMP/pgdata" -U postgres --auth=trust -E UTF8 --locale=C) >/dev/null
  { echo "listen_addresses = '127.0.0.1'"; echo "port = $PORT"; echo "unix_socket_directories = '$TMP'"
    echo "max_connections = $((PCLIENTS + 20))"; cat "$HERE/postgresql.bench.conf"; } >>"$TMP/pgdata/postgresql.conf"
  (cd "$TMP" && "${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$TMP/pgdata" -l "$TMP/pg.log" -w -t 120 start) >/dev/null
  SERVER_UP=1
  PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
  "${PSQL[@]}" -d postgres -c 'CREATE DATABASE tpcc' >/dev/null
  log "PostgreSQL: loading $W warehouses"
  "${PSQL[@]}" -d tpcc -v W="$W" -v phase=schema -f "$HERE/tpcc.sql" >/dev/null
  "${PSQL[@]}" -d tpcc -f "$HERE/procs.sql" >/dev/null
  { echo "SELECT tpcc_load_items()"; for w in $(seq 1 "$W"); do echo "SELECT tpcc_load_warehouse($w)"; done; } \
    | xargs -d '\n' -P 2 -I{} "${PSQL[@]}" -d tpcc -c "SET default_transaction_isolation = 'read committed'" -c {} >/dev/null
  "${PSQL[@]}" -d tpcc -v W="$W" -v phase=finish -f "$HERE/tpcc.sql" >/dev/null
  "$CHQ" --print-postgres >"$TMP/pg_queries"
  # One query, timed by the server's clock as psql reports it, at REPEATABLE READ.
  pg_query() { # pg_query NAME SQL → "NAME SECONDS"
    local ms
    ms=$(PGOPTIONS='-c default_transaction_isolation=repeatable\ read' "${PSQL[@]}" -d tpcc \
      -c '\timing on' -c "$2" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1)
    echo "$1 $(awk -v m="$ms" 'BEGIN { printf "%.4f", m / 1000 }')"
  }
  pgbench_run() {
    PGOPTIONS='-c synchronous_commit=off' pgbench -h 127.0.0.1 -p "$PORT" -U postgres -n \
      -c "$PCLIENTS" -j 2 -T "$D" -M prepared --max-tries=0 -D W="$W" \
      -f "$HERE/new_order.pgbench@50" -f "$HERE/payment.pgbench@50" tpcc 2>/dev/null \
      | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | awk '{ printf "%.0f", $1 }'
  }
  "${PSQL[@]}" -d tpcc -c CHECKPOINT >/dev/null
  log "PostgreSQL: the queries alone, $RUNS runs each"
  : >"$TMP/p_alone"
  while IFS=$'\t' read -r name sql; do
    for _ in $(seq 1 "$RUNS"); do pg_query "$name" "$sql" >>"$TMP/p_alone"; done
  done <"$TMP/pg_queries"
  log "PostgreSQL: TPC-C new-order+payment alone, $PCLIENTS clients, ${D}s"
  P_OLTP=$(pgbench_run)
  log "PostgreSQL: the same with the queries back to back"
  pgbench_run >"$TMP/p_bench_load" &
  bpid=$!
  sleep 5
  : >"$TMP/p_load"
  end=$((SECONDS + D - 10))
  while [ "$SECONDS" -lt "$end" ]; do
    while IFS=$'\t' read -r name sql; do
      [ "$SECONDS" -lt "$end" ] || break
      pg_query "$name" "$sql" >>"$TMP/p_load"
    done <"$TMP/pg_queries"
  done
  wait "$bpid"
  P_HTAP=$(cat "$TMP/p_bench_load")
fi

# ------------------------------------------------------------------------------ report
echo "## HTAP: CH-benCHmark queries while TPC-C new-order+payment runs (W=$W, $(date -u +%F))"
echo
echo "$(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1); detflow $(cd "$ROOT" && git describe --always --dirty)"
echo
echo "| query | detflow alone, p50 s | detflow under OLTP, p50 s (runs) | PostgreSQL alone, p50 s | PostgreSQL under OLTP, p50 s (runs) |"
echo "| --- | ---: | ---: | ---: | ---: |"
names=$( { cat "$TMP/d_alone" 2>/dev/null; cat "$TMP/p_alone" 2>/dev/null; } | awk '{print $1}' | awk '!s[$0]++')
for q in $names; do
  da=$( { grep "^$q " "$TMP/d_alone" 2>/dev/null || true; } | p50)
  dl=$( { grep "^$q " "$TMP/d_load" 2>/dev/null || true; } | p50)
  dn=$( { grep "^$q " "$TMP/d_load" 2>/dev/null || true; } | wc -l)
  pa=$( { grep "^$q " "$TMP/p_alone" 2>/dev/null || true; } | p50)
  pl=$( { grep "^$q " "$TMP/p_load" 2>/dev/null || true; } | p50)
  pn=$( { grep "^$q " "$TMP/p_load" 2>/dev/null || true; } | wc -l)
  echo "| $q | $da | $dl ($dn) | $pa | $pl ($pn) |"
done
echo
echo "| OLTP, txn/s | alone | with the analytical stream | kept |"
echo "| --- | ---: | ---: | ---: |"
if [ "$DO_DETFLOW" = 1 ]; then
  echo "| detflow, $DCLIENTS clients, replication $REPLICATION, fsync on | $D_OLTP | $D_HTAP | $(awk -v a="$D_OLTP" -v b="$D_HTAP" 'BEGIN { printf "%.0f%%", 100 * b / a }') |"
fi
if [ "$DO_PG" = 1 ]; then
  echo "| PostgreSQL SERIALIZABLE, $PCLIENTS clients, synchronous_commit=off | $P_OLTP | $P_HTAP | $(awk -v a="$P_OLTP" -v b="$P_HTAP" 'BEGIN { printf "%.0f%%", 100 * b / a }') |"
fi
