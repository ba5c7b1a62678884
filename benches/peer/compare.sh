#!/usr/bin/env bash
# TPC-C peer comparison: detflow against PostgreSQL (SERIALIZABLE, durable) on this machine.
# See benches/peer/README.md.
#
#   bash benches/peer/compare.sh [--warehouses 8] [--duration 60] [--clients 64]
#                                [--warmup 30] [--skip-detflow] [--out FILE]
#
# Progress goes to stderr; the report (machine, table, PostgreSQL details) to stdout and,
# with --out, to FILE.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

W=8
D=60
C=64
WARMUP=30
SKIP_DETFLOW=0
OUT=""
# Retries per transaction: 0 = until it commits (pgbench allows that with -T).
MAX_TRIES=${MAX_TRIES:-0}

usage() {
  sed -n '2,/^set /{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --warehouses) W=$2; shift 2 ;;
    --warehouses=*) W=${1#*=}; shift ;;
    --duration) D=${2%s}; shift 2 ;;
    --duration=*) D=${1#*=}; D=${D%s}; shift ;;
    --clients) C=$2; shift 2 ;;
    --clients=*) C=${1#*=}; shift ;;
    --warmup) WARMUP=${2%s}; shift 2 ;;
    --warmup=*) WARMUP=${1#*=}; WARMUP=${WARMUP%s}; shift ;;
    --skip-detflow) SKIP_DETFLOW=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    -h|--help) usage ;;
    *) echo "compare.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
for v in "$W" "$D" "$C"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: warehouses, duration and clients must be positive integers" >&2; exit 2; }
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || { echo "compare.sh: --warmup takes seconds (0 for none)" >&2; exit 2; }
if [ -n "$OUT" ]; then
  OUT=$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")
fi

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'compare.sh: %s\n' "$*" >&2; exit 1; }

NPROC=$(nproc)
CPU_MODEL=$( (lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1) || true)
[ -n "$CPU_MODEL" ] || CPU_MODEL=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -1)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
MEM_GIB=$(awk '/^MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)
log "machine: nproc=$NPROC, CPU: ${CPU_MODEL:-unknown}, ${MEM_GIB} GiB RAM, load average (1/5/15 min) before start: $LOAD_BEFORE"
if awk -v l="${LOAD_BEFORE%% *}" 'BEGIN { exit !(l > 0.5) }'; then
  log "warning: the machine is not idle (1-min load ${LOAD_BEFORE%% *}); other work will lower the numbers"
fi

# ---------------------------------------------------------------- JSON fields and numbers
json_field() { # json_field FIELD < json
  local field=$1 input
  input=$(cat)
  if command -v python3 >/dev/null 2>&1; then
    printf '%s' "$input" | python3 -c '
import json, sys
text = sys.stdin.read()
v = None
# The output should be one JSON object; tolerate other lines around it.
decoder = json.JSONDecoder()
start = text.find("{")
while start >= 0:
    try:
        obj, _ = decoder.raw_decode(text[start:])
        if isinstance(obj, dict) and sys.argv[1] in obj:
            v = obj[sys.argv[1]]
            break
    except ValueError:
        pass
    start = text.find("{", start + 1)
print("n/a" if v is None else v)' "$field"
  elif command -v jq >/dev/null 2>&1; then
    printf '%s' "$input" | jq -r --arg f "$field" '.[$f] // "n/a"' 2>/dev/null || echo n/a
  else
    local v
    v=$(printf '%s' "$input" | tr -d '\n' | sed -n "s/.*\"$field\"[[:space:]]*:[[:space:]]*\([-0-9.eE+]*\).*/\1/p")
    echo "${v:-n/a}"
  fi
}
is_num() { [[ "$1" =~ ^[0-9]+([.][0-9]+)?([eE][-+]?[0-9]+)?$ ]]; }
fmt() { if is_num "$1"; then awk -v x="$1" 'BEGIN { printf "%.0f", x }'; else echo n/a; fi; }
ratio() { if is_num "$1" && is_num "$2" && awk -v b="$2" 'BEGIN { exit !(b > 0) }'; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; else echo n/a; fi; }
mul() { if is_num "$1"; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", a * b }'; else echo n/a; fi; }

# ---------------------------------------------------------------- PostgreSQL binaries
find_pgbin() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/postgres" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir)
    if [ -x "$d/postgres" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
  fi
  d=$(dirname "$(command -v postgres 2>/dev/null || echo /nonexistent/x)")
  if [ -x "$d/postgres" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
  return 1
}
PGBIN=$(find_pgbin || true)
if [ -z "$PGBIN" ]; then
  log "PostgreSQL server binaries not found; trying apt-get install -y postgresql"
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    (apt-get install -y postgresql || { apt-get update && apt-get install -y postgresql; }) >&2 || true
  fi
  PGBIN=$(find_pgbin || true)
  [ -n "$PGBIN" ] || die "PostgreSQL (initdb, pg_ctl, postgres) is not installed and 'apt-get install -y postgresql' did not provide it; install PostgreSQL >= 15 and retry"
fi
PGBENCH=$PGBIN/pgbench
[ -x "$PGBENCH" ] || PGBENCH=$(command -v pgbench || true)
[ -n "$PGBENCH" ] || die "pgbench not found (it ships with postgresql-client / postgresql-contrib)"
PSQL_BIN=$PGBIN/psql
[ -x "$PSQL_BIN" ] || PSQL_BIN=$(command -v psql || true)
[ -n "$PSQL_BIN" ] || die "psql not found"
PGBENCH_MAJOR=$("$PGBENCH" --version | sed -n 's/.* \([0-9][0-9]*\)[.0-9]*.*/\1/p' | head -1)
[ "${PGBENCH_MAJOR:-0}" -ge 15 ] || die "pgbench $("$PGBENCH" --version) is too old: --max-tries (retrying serialization failures) needs PostgreSQL 15"
PG_VERSION=$("$PGBIN/postgres" --version | sed 's/^postgres (PostgreSQL) //')

# ---------------------------------------------------------------- the server's OS user
RUNAS=()
if [ "$(id -u)" -eq 0 ]; then
  if ! id -u postgres >/dev/null 2>&1; then
    log "creating the unprivileged OS user 'postgres' (the server refuses to run as root)"
    useradd --system --user-group --no-create-home --shell /usr/sbin/nologin postgres \
      || die "could not create the 'postgres' OS user"
  fi
  command -v runuser >/dev/null 2>&1 || die "runuser not found (util-linux)"
  RUNAS=(runuser -u postgres --)
fi
as_server_user() { (cd "$TMP" && "${RUNAS[@]}" "$@"); }

# ---------------------------------------------------------------- temp dir, cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/detflow-peer.XXXXXX")
PGDATA_DIR=$TMP/data
SERVER_UP=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$SERVER_UP" = 1 ]; then
    log "stopping PostgreSQL"
    as_server_user "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >/dev/null 2>&1 \
      || as_server_user "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w -t 30 stop >/dev/null 2>&1 \
      || true
  fi
  # Loader jobs still running (interrupted load).
  local jobs_left
  jobs_left=$(jobs -p 2>/dev/null || true)
  [ -z "$jobs_left" ] || kill $jobs_left 2>/dev/null || true
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT
trap 'log terminated; exit 143' TERM
if [ ${#RUNAS[@]} -gt 0 ]; then chown postgres: "$TMP"; fi
chmod 755 "$TMP"

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
    return
  fi
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  die "no free port found"
}

# ---------------------------------------------------------------- PostgreSQL
run_postgres() {
  PORT=$(free_port)
  log "PostgreSQL $PG_VERSION: initdb in $PGDATA_DIR, port $PORT"
  as_server_user "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 --locale=C \
    >"$TMP/initdb.log" 2>&1 || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
  {
    echo
    echo "# --- benches/peer/compare.sh"
    echo "listen_addresses = '127.0.0.1'"
    echo "port = $PORT"
    echo "unix_socket_directories = '$TMP'"
    echo "max_connections = $((C + 10))"
    cat "$HERE/postgresql.bench.conf"
  } >>"$PGDATA_DIR/postgresql.conf"
  as_server_user "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$TMP/server.log" -w -t 120 start >/dev/null \
    || { cat "$TMP/server.log" >&2 2>/dev/null; die "PostgreSQL did not start"; }
  SERVER_UP=1

  PSQL=("$PSQL_BIN" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
  "${PSQL[@]}" -d postgres -c 'CREATE DATABASE tpcc' >/dev/null

  # Load: schema, then items and each warehouse in parallel sessions, then keys and indexes.
  log "loading $W warehouses ($NPROC parallel sessions)"
  local t0 t1
  t0=$(date +%s.%N)
  "${PSQL[@]}" -d tpcc -v W="$W" -v phase=schema -f "$HERE/tpcc.sql" >/dev/null
  "${PSQL[@]}" -d tpcc -f "$HERE/procs.sql" >/dev/null
  {
    echo "SELECT tpcc_load_items()"
    for w in $(seq 1 "$W"); do echo "SELECT tpcc_load_warehouse($w)"; done
  } | xargs -d '\n' -P "$NPROC" -I{} \
      "${PSQL[@]}" -d tpcc -c "SET default_transaction_isolation = 'read committed'" -c {} >/dev/null \
    || die "loading failed"
  log "rows loaded; adding keys and indexes, VACUUM ANALYZE"
  "${PSQL[@]}" -d tpcc -v W="$W" -v phase=finish -f "$HERE/tpcc.sql" >/dev/null
  t1=$(date +%s.%N)
  LOAD_SECONDS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }')
  DB_SIZE=$("${PSQL[@]}" -d tpcc -Atc "SELECT pg_size_pretty(pg_database_size('tpcc'))")
  log "loaded in ${LOAD_SECONDS}s, database size $DB_SIZE"

  # Warm-up, not measured: the first run on a freshly loaded cluster was measured ~3x slower
  # than later ones (cause not pinned down: new WAL segments, first writes to pages, ...).
  if [ "$WARMUP" -gt 0 ]; then
    log "warm-up: full mix for ${WARMUP}s (not measured)"
    "$PGBENCH" -h 127.0.0.1 -p "$PORT" -U postgres -n -c "$C" -j 2 -T "$WARMUP" -M prepared \
      --max-tries="$MAX_TRIES" -D W="$W" -f "$HERE/new_order.pgbench@45" -f "$HERE/payment.pgbench@43" \
      -f "$HERE/order_status.pgbench@4" -f "$HERE/delivery.pgbench@4" -f "$HERE/stock_level.pgbench@4" \
      tpcc >"$TMP/pgbench_warmup.out" 2>&1 || log "warm-up pgbench exited with an error (see below)"
    sed -n 's/^tps = /    warm-up tps = /p' "$TMP/pgbench_warmup.out" >&2
  fi
  pg_run mix50 "$HERE/new_order.pgbench@50" "$HERE/payment.pgbench@50"
  pg_run full "$HERE/new_order.pgbench@45" "$HERE/payment.pgbench@43" \
    "$HERE/order_status.pgbench@4" "$HERE/delivery.pgbench@4" "$HERE/stock_level.pgbench@4"

  log "consistency checks (TPC-C clause 3.3.2)"
  CONSISTENCY=$("${PSQL[@]}" -d tpcc -At -F ' ' <<'SQL'
SELECT '1 (W_YTD = sum(D_YTD)): ' || CASE WHEN count(*) = 0 THEN 'ok' ELSE count(*) || ' warehouses violate' END
FROM warehouse w WHERE w.w_ytd <> (SELECT sum(d_ytd) FROM district WHERE d_w_id = w.w_id);
SELECT '2 (D_NEXT_O_ID - 1 = max(O_ID) = max(NO_O_ID)): ' || CASE WHEN count(*) = 0 THEN 'ok' ELSE count(*) || ' districts violate' END
FROM district d
WHERE d.d_next_o_id - 1 <> (SELECT max(o_id) FROM orders WHERE o_w_id = d.d_w_id AND o_d_id = d.d_id)
   OR d.d_next_o_id - 1 <> (SELECT max(no_o_id) FROM new_order WHERE no_w_id = d.d_w_id AND no_d_id = d.d_id);
SELECT '3 (max(NO_O_ID) - min(NO_O_ID) + 1 = count(NEW_ORDER)): ' || CASE WHEN count(*) = 0 THEN 'ok' ELSE count(*) || ' districts violate' END
FROM (SELECT max(no_o_id) - min(no_o_id) + 1 AS span, count(*) AS n FROM new_order GROUP BY no_w_id, no_d_id) x
WHERE span <> n;
SELECT '4 (sum(O_OL_CNT) = count(ORDER_LINE)): ' || CASE WHEN count(*) = 0 THEN 'ok' ELSE count(*) || ' districts violate' END
FROM (SELECT o_w_id, o_d_id, sum(o_ol_cnt) AS s FROM orders GROUP BY 1, 2) o
FULL JOIN (SELECT ol_w_id, ol_d_id, count(*) AS n FROM order_line GROUP BY 1, 2) l
  ON l.ol_w_id = o.o_w_id AND l.ol_d_id = o.o_d_id
WHERE o.s IS DISTINCT FROM l.n;
SELECT '5 (O_CARRIER_ID null iff a NEW_ORDER row exists): ' || CASE WHEN count(*) = 0 THEN 'ok' ELSE count(*) || ' orders violate' END
FROM orders o LEFT JOIN new_order n ON n.no_w_id = o.o_w_id AND n.no_d_id = o.o_d_id AND n.no_o_id = o.o_id
WHERE (o.o_carrier_id IS NULL) <> (n.no_o_id IS NOT NULL);
SELECT '8 (W_YTD = sum(H_AMOUNT)): ' || CASE WHEN count(*) = 0 THEN 'ok' ELSE count(*) || ' warehouses violate' END
FROM warehouse w WHERE w.w_ytd <> (SELECT sum(h_amount) FROM history WHERE h_w_id = w.w_id);
SQL
)
  printf '%s\n' "$CONSISTENCY" | sed 's/^/    /' >&2

  log "stopping PostgreSQL"
  as_server_user "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 120 stop >/dev/null || true
  SERVER_UP=0
  rm -rf "$PGDATA_DIR"
}

# CPU accounting over a run, to tell whether anything else was competing for the cores.
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
# Jiffies used by the server: the postmaster (with the children it has reaped) and its live children.
pg_jiffies() {
  local pm
  pm=$(head -1 "$PGDATA_DIR/postmaster.pid" 2>/dev/null || echo 0)
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$pm" '{
      pid = $1; line = $0; sub(/^.*\) /, "", line); split(line, f, " ")
      if (pid == pm) s += f[12] + f[13] + f[14] + f[15]; else if (f[2] == pm) s += f[12] + f[13] }
    END { print s + 0 }'
}
# CPU seconds of this shell's finished children (user + system), from `times`. Must run in
# the main shell (not in $(...), a fresh process whose children times start at zero).
children_seconds() { # children_seconds VAR
  builtin times >"$TMP/times"
  printf -v "$1" '%s' "$(sed -n 2p "$TMP/times" | awk '{ t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub(/s$/, "", a[2]); t += a[1] * 60 + a[2] } print t }')"
}

# pg_run NAME SCRIPT@WEIGHT... : one measured pgbench run; sets PG_<field>_<NAME>.
pg_run() {
  local name=$1; shift
  local args=() s
  for s in "$@"; do args+=(-f "$s"); done
  "${PSQL[@]}" -d tpcc -c CHECKPOINT >/dev/null
  printf -v "PG_LOAD_$name" '%s' "$(cut -d' ' -f1 /proc/loadavg)"
  log "pgbench $name: -c $C -j 2 -T $D -M prepared --max-tries=$MAX_TRIES (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  local out=$TMP/pgbench_$name.out rc=0
  mkdir -p "$TMP/log_$name"
  local busy0 pg0 ch0 busy1 pg1 ch1
  busy0=$(cpu_busy); pg0=$(pg_jiffies); children_seconds ch0
  PGOPTIONS= "$PGBENCH" -h 127.0.0.1 -p "$PORT" -U postgres -n \
    -c "$C" -j 2 -T "$D" -M prepared --max-tries="$MAX_TRIES" --failures-detailed \
    -P 10 -D W="$W" --log --log-prefix="$TMP/log_$name/tx" "${args[@]}" tpcc \
    >"$out" 2>"$TMP/pgbench_$name.err" || rc=$?
  busy1=$(cpu_busy); pg1=$(pg_jiffies); children_seconds ch1
  # Shares of the machine's CPU capacity over the run: server, pgbench, everything else.
  local cpu
  cpu=$(awk -v b="$((busy1 - busy0))" -v p="$((pg1 - pg0))" -v c0="$ch0" -v c1="$ch1" -v hz="$CLK_TCK" \
          -v n="$NPROC" -v d="$D" 'BEGIN {
      cap = n * d * hz; c = (c1 - c0) * hz; o = b - p - c; if (o < 0) o = 0
      printf "server %.0f%%, pgbench %.0f%%, other %.0f%%", 100 * p / cap, 100 * c / cap, 100 * o / cap }')
  printf -v "PG_CPU_$name" '%s' "$cpu"
  grep -E '^progress:' "$TMP/pgbench_$name.err" | sed 's/^/    /' >&2 || true
  if [ "$rc" -ne 0 ]; then
    log "pgbench $name exited with status $rc; its errors:"
    grep -vE '^progress:' "$TMP/pgbench_$name.err" | tail -20 >&2 || true
  fi
  local tps processed failed retried retries lat p99 p50
  tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | head -1)
  processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | head -1)
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out" | head -1)
  retried=$(sed -n 's/^number of transactions retried: \([0-9]*\).*/\1/p' "$out" | head -1)
  retries=$(sed -n 's/^total number of retries: \([0-9]*\).*/\1/p' "$out" | head -1)
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out" | head -1)
  # Percentiles over committed transactions, from the per-transaction log (field 3: latency in
  # microseconds including all tries, or "failed"/"serialization"/"deadlock").
  read -r p50 p99 < <(cat "$TMP"/log_"$name"/tx* 2>/dev/null | awk '$3 ~ /^[0-9]+$/ { print $3 }' \
    | sort -n | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "n/a n/a"; exit }
        i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
        printf "%.1f %.1f\n", v[i50] / 1000, v[i99] / 1000 }')
  printf -v "PG_TPS_$name" '%s' "${tps:-n/a}"
  printf -v "PG_PROCESSED_$name" '%s' "${processed:-n/a}"
  printf -v "PG_FAILED_$name" '%s' "${failed:-n/a}"
  printf -v "PG_RETRIED_$name" '%s' "${retried:-n/a}"
  printf -v "PG_RETRIES_$name" '%s' "${retries:-n/a}"
  printf -v "PG_LAT_$name" '%s' "${lat:-n/a}"
  printf -v "PG_P50_$name" '%s' "${p50:-n/a}"
  printf -v "PG_P99_$name" '%s' "${p99:-n/a}"
  # Per-script throughput (script order as given): "name tps" lines.
  local per
  per=$(awk '/^SQL script [0-9]+:/ { n = $NF; sub(/.*\//, "", n); sub(/\.pgbench$/, "", n) }
             /^ - [0-9]+ transactions .*tps = / { t = $0; sub(/.*tps = /, "", t); sub(/\).*/, "", t); printf "%s%s=%.0f", sep, n, t; sep = " " }' "$out")
  printf -v "PG_PER_$name" '%s' "$per"
  log "pgbench $name: tps=${tps:-n/a} processed=${processed:-n/a} failed=${failed:-n/a} retried=${retried:-n/a} retries=${retries:-n/a} latency avg=${lat:-n/a} ms p50=${p50} ms p99=${p99} ms; per script: $per; CPU: $cpu"
}

# ---------------------------------------------------------------- detflow
run_json() { # run_json LABEL CMD... : prints the command's JSON object, or nothing on failure
  local label=$1; shift
  local out rc=0
  out=$(timeout "$((D * 3 + 300))" "$@" 2>"$TMP/$label.err") || rc=$?
  if [ "$rc" -ne 0 ] || [ -z "$out" ]; then
    log "$label failed (status $rc): $(tail -3 "$TMP/$label.err" | tr '\n' ' ')"
    return 0
  fi
  printf '%s\n' "$out"
}

run_detflow() {
  DF_mix50=n/a DF_full=n/a DF_TPMC_mix50=n/a DF_TPMC_full=n/a SER_mix50=n/a SER_full=n/a
  log "building detflow (release)"
  if ! (cd "$ROOT" && cargo build --release -p detflow-node -p detflow-benches) >"$TMP/cargo.log" 2>&1; then
    log "cargo build failed; detflow columns are n/a. Last lines:"
    tail -5 "$TMP/cargo.log" >&2
    return 0
  fi
  local bin=$ROOT/target/release mix json
  for mix in mix50 full; do
    local m=new-order-payment
    [ "$mix" = full ] && m=standard
    if [ -x "$bin/detflow" ]; then
      log "detflow bench tpcc --mix $m (load average $(cut -d' ' -f1-3 /proc/loadavg))"
      json=$(run_json "detflow_$mix" "$bin/detflow" bench tpcc --warehouses "$W" --duration "${D}s" \
        --clients "$C" --mix "$m" --json)
      if [ -n "$json" ]; then
        printf -v "DF_$mix" '%s' "$(printf '%s' "$json" | json_field throughput)"
        printf -v "DF_TPMC_$mix" '%s' "$(printf '%s' "$json" | json_field tpmc)"
      fi
    else
      log "no $bin/detflow"
    fi
    if [ -x "$bin/tpcc-serial" ]; then
      log "tpcc-serial --mix $m"
      json=$(run_json "serial_$mix" "$bin/tpcc-serial" --warehouses "$W" --mix "$m" --seconds 10 --json)
      if [ -n "$json" ]; then
        printf -v "SER_$mix" '%s' "$(printf '%s' "$json" | json_field throughput)"
      fi
    else
      log "no $bin/tpcc-serial"
    fi
  done
}

# ---------------------------------------------------------------- main
run_postgres
if [ "$SKIP_DETFLOW" = 1 ]; then
  DF_mix50=n/a DF_full=n/a DF_TPMC_mix50=n/a DF_TPMC_full=n/a SER_mix50=n/a SER_full=n/a
  log "--skip-detflow: detflow columns are n/a"
else
  run_detflow
fi

report() {
  echo "## TPC-C peer comparison: W=$W, ${D}s per run, $C clients"
  echo
  echo "Machine: nproc=$NPROC, CPU: ${CPU_MODEL:-unknown}, ${MEM_GIB} GiB RAM, load average before start: $LOAD_BEFORE; PostgreSQL $PG_VERSION; $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| mix | detflow txn/s | PostgreSQL SERIALIZABLE txn/s | serial bound txn/s (1 core) | serial bound × $NPROC cores | detflow / PostgreSQL | detflow / (serial × cores) |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  local mix label df pg ser serx v f row
  for mix in mix50 full; do
    label="new-order+payment 50/50"
    [ "$mix" = full ] && label="full mix 45/43/4/4/4"
    v=DF_$mix; df=${!v}
    v=PG_TPS_$mix; pg=${!v}
    v=SER_$mix; ser=${!v}
    serx=$(mul "$ser" "$NPROC")
    echo "| $label | $(fmt "$df") | $(fmt "$pg") | $(fmt "$ser") | $serx | $(ratio "$df" "$pg") | $(ratio "$df" "$serx") |"
  done
  echo
  echo "PostgreSQL (pgbench -c $C -j 2 -T $D -M prepared --max-tries=$MAX_TRIES after a ${WARMUP}s unmeasured warm-up; txn/s counts committed transactions, New-Orders rolled back for an unused item included; load $W warehouses in ${LOAD_SECONDS}s, $DB_SIZE):"
  echo
  echo "| mix | committed | failed | retried txns | total retries | latency avg ms | p50 ms | p99 ms | per script txn/s | CPU use over the run (of $NPROC cores) |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"
  for mix in mix50 full; do
    row="| $mix |"
    for f in PROCESSED FAILED RETRIED RETRIES LAT P50 P99 PER CPU; do
      v=PG_${f}_$mix
      row+=" ${!v} |"
    done
    echo "$row"
  done
  echo
  echo "detflow tpmC: mix50 $(fmt "$DF_TPMC_mix50"), full $(fmt "$DF_TPMC_full")."
  echo
  echo "PostgreSQL consistency after the runs (clause 3.3.2):"
  printf '%s\n' "$CONSISTENCY" | sed 's/^/- /'
}
REPORT=$(report)
printf '%s\n' "$REPORT"
if [ -n "$OUT" ]; then
  printf '%s\n' "$REPORT" >"$OUT"
  log "report written to $OUT"
fi
