#!/usr/bin/env bash
# TPC-C peer comparison: detflow against PostgreSQL (SERIALIZABLE) on this machine, swept over
# client counts, PostgreSQL with synchronous_commit on (the fair pairing: durable at commit,
# as detflow is) and off (for reference). See benches/peer/README.md.
#
#   bash benches/peer/compare.sh [--warehouses 8] [--duration 60] [--warmup 30]
#                                [--clients-list 8,16,32,64,128 | --clients N]
#                                [--replication R] [--no-build] [--skip-detflow] [--out FILE]
#
#   --clients-list L  client counts, comma-separated (default 8,16,32,64,128); every count
#                     runs detflow and PostgreSQL (synchronous_commit on, then off) for
#                     both mixes. --clients N is the same with one count.
#   --replication R   passed to `detflow bench` (replicas per partition, 1..3); without it,
#                     detflow's default (2). Report both R=1 and R=2 (two invocations).
#   --no-build        no `cargo build`: use target/release/detflow (and tpcc-serial) as built.
#   --skip-detflow    PostgreSQL only; detflow columns are n/a.
#   --duration, --warmup  seconds per measured run / of the one unmeasured PostgreSQL
#                     warm-up (a trailing "s" is accepted; --warmup 0 for none).
#
# Progress goes to stderr; the report (machine, tables, details) to stdout and, with --out,
# to FILE.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=$ROOT/target/release

W=8
D=60
WARMUP=30
CLIENTS_ARG=8,16,32,64,128
CLIENTS_OPT=""      # which option set the client counts (--clients or --clients-list)
REPLICATION=""      # empty: detflow's default
NO_BUILD=0
SKIP_DETFLOW=0
OUT=""
# Retries per transaction: 0 = until it commits (pgbench allows that with -T).
MAX_TRIES=${MAX_TRIES:-0}

usage() { # usage EXIT_CODE
  sed -n '2,/^set /{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit "$1"
}
bad() { # bad MESSAGE: a usage error
  printf 'compare.sh: %s\n' "$*" >&2
  echo "compare.sh: see 'bash benches/peer/compare.sh --help'" >&2
  exit 2
}
# needs_value "$@": the option in $1 must be followed by a value.
needs_value() { if [ $# -lt 2 ] || [[ "$2" == --* ]]; then bad "$1 needs a value"; fi; }
set_clients() { # set_clients OPTION VALUE
  if [ -n "$CLIENTS_OPT" ] && [ "$CLIENTS_OPT" != "$1" ]; then
    bad "give --clients or --clients-list, not both"
  fi
  CLIENTS_OPT=$1
  CLIENTS_ARG=$2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --warehouses) needs_value "$@"; W=$2; shift 2 ;;
    --warehouses=*) W=${1#*=}; shift ;;
    --duration) needs_value "$@"; D=${2%s}; shift 2 ;;
    --duration=*) D=${1#*=}; D=${D%s}; shift ;;
    --clients) needs_value "$@"; set_clients --clients "$2"; shift 2 ;;
    --clients=*) set_clients --clients "${1#*=}"; shift ;;
    --clients-list) needs_value "$@"; set_clients --clients-list "$2"; shift 2 ;;
    --clients-list=*) set_clients --clients-list "${1#*=}"; shift ;;
    --warmup) needs_value "$@"; WARMUP=${2%s}; shift 2 ;;
    --warmup=*) WARMUP=${1#*=}; WARMUP=${WARMUP%s}; shift ;;
    --replication) needs_value "$@"; REPLICATION=$2; shift 2 ;;
    --replication=*) REPLICATION=${1#*=}; shift ;;
    --no-build) NO_BUILD=1; shift ;;
    --skip-detflow) SKIP_DETFLOW=1; shift ;;
    --out) needs_value "$@"; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    -h|--help) usage 0 ;;
    *) bad "unknown argument '$1'" ;;
  esac
done
[[ "$W" =~ ^[1-9][0-9]*$ ]] || bad "--warehouses takes a positive integer (got '$W')"
[[ "$D" =~ ^[1-9][0-9]*$ ]] || bad "--duration takes a positive number of seconds (got '$D')"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || bad "--warmup takes seconds, 0 for none (got '$WARMUP')"
if [ "$CLIENTS_OPT" = --clients ]; then
  [[ "$CLIENTS_ARG" =~ ^[1-9][0-9]*$ ]] \
    || bad "--clients takes one positive integer (got '$CLIENTS_ARG'); use --clients-list 8,16,... for several"
else
  [[ "$CLIENTS_ARG" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] \
    || bad "--clients-list takes positive integers separated by commas, without spaces, e.g. 8,16,32 (got '$CLIENTS_ARG')"
fi
IFS=, read -r -a CLIENTS <<<"$CLIENTS_ARG"
CMAX=0
declare -A SEEN=()
for c in "${CLIENTS[@]}"; do
  [ -z "${SEEN[$c]:-}" ] || bad "client count $c is listed twice in '$CLIENTS_ARG'"
  SEEN[$c]=1
  if [ "${#c}" -gt 4 ] || [ "$c" -gt 1000 ]; then
    bad "client count $c: at most 1000 (PostgreSQL gets max_connections = largest count + 10)"
  fi
  [ "$c" -le "$CMAX" ] || CMAX=$c
done
unset SEEN c
if [ -n "$REPLICATION" ]; then
  [[ "$REPLICATION" =~ ^[1-3]$ ]] \
    || bad "--replication takes 1, 2 or 3 (replicas per partition; detflow bench runs 3 node processes), got '$REPLICATION'"
fi
if [ -n "$OUT" ]; then
  [ -d "$(dirname "$OUT")" ] || bad "--out $OUT: directory $(dirname "$OUT") does not exist"
  OUT=$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")
fi

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'compare.sh: %s\n' "$*" >&2; exit 1; }

# Before anything slow: --no-build needs the binaries.
if [ "$SKIP_DETFLOW" = 0 ] && [ "$NO_BUILD" = 1 ]; then
  [ -x "$BIN/detflow" ] \
    || die "--no-build: $BIN/detflow is missing or not executable; build it with 'cargo build --release -p detflow-node -p detflow-benches', drop --no-build, or pass --skip-detflow"
  [ -x "$BIN/tpcc-serial" ] \
    || log "--no-build: no $BIN/tpcc-serial; the serial-bound figures will be n/a (cargo build --release -p detflow-benches builds it)"
fi

NPROC=$(nproc)
CPU_MODEL=$( (lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1) || true)
[ -n "$CPU_MODEL" ] || CPU_MODEL=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -1)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
MEM_GIB=$(awk '/^MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)
log "machine: nproc=$NPROC, CPU: ${CPU_MODEL:-unknown}, ${MEM_GIB} GiB RAM, load average (1/5/15 min) before start: $LOAD_BEFORE"
if awk -v l="${LOAD_BEFORE%% *}" 'BEGIN { exit !(l > 0.5) }'; then
  log "warning: the machine is not idle (1-min load ${LOAD_BEFORE%% *}); other work will lower the numbers"
fi
RUNS_PG=$((2 * ${#CLIENTS[@]} * 2))
RUNS_DF=$((2 * ${#CLIENTS[@]}))
[ "$SKIP_DETFLOW" = 0 ] || RUNS_DF=0
log "plan: client counts ${CLIENTS[*]}; $RUNS_PG PostgreSQL runs (2 mixes x ${#CLIENTS[@]} client counts x synchronous_commit on/off) and $RUNS_DF detflow runs of ${D}s each: at least $(((RUNS_PG + RUNS_DF) * D / 60 + 1)) min plus loading and the ${WARMUP}s warm-up"

# ---------------------------------------------------------------- JSON fields and numbers
json_field() { # json_field FIELD[.KEY_OR_INDEX...] < json, e.g. json_field latency_us.0
  local field=$1 input
  input=$(cat)
  if command -v python3 >/dev/null 2>&1; then
    printf '%s' "$input" | python3 -c '
import json, sys
text = sys.stdin.read()
path = sys.argv[1].split(".")
v = None
# The output should be one JSON object; tolerate other lines around it.
decoder = json.JSONDecoder()
start = text.find("{")
while start >= 0:
    try:
        obj, _ = decoder.raw_decode(text[start:])
        if isinstance(obj, dict) and path[0] in obj:
            v = obj
            for p in path:
                if isinstance(v, dict):
                    v = v.get(p)
                elif isinstance(v, list) and p.isdigit() and int(p) < len(v):
                    v = v[int(p)]
                else:
                    v = None
                if v is None:
                    break
            break
    except ValueError:
        pass
    start = text.find("{", start + 1)
print("n/a" if v is None else v)' "$field"
  elif command -v jq >/dev/null 2>&1; then
    printf '%s' "$input" \
      | jq -r --arg f "$field" 'getpath($f | split(".") | map(tonumber? // .)) // "n/a"' 2>/dev/null \
      || echo n/a
  else
    local v name=${field%%.*} flat
    flat=$(printf '%s' "$input" | tr -d '\n')
    if [[ "$field" =~ ^[a-z_]+\.[0-9]+$ ]]; then # an element of an array of numbers
      v=$(printf '%s' "$flat" | sed -n "s/.*\"$name\"[[:space:]]*:[[:space:]]*\[\([^]]*\)\].*/\1/p" \
        | tr -d ' ' | cut -d, -f"$((${field#*.} + 1))")
    else
      v=$(printf '%s' "$flat" | sed -n "s/.*\"$field\"[[:space:]]*:[[:space:]]*\([-0-9.eE+]*\).*/\1/p")
    fi
    echo "${v:-n/a}"
  fi
}
is_num() { [[ "$1" =~ ^[0-9]+([.][0-9]+)?([eE][-+]?[0-9]+)?$ ]]; }
fmt() { if is_num "$1"; then awk -v x="$1" 'BEGIN { printf "%.0f", x }'; else echo n/a; fi; }
ratio() { if is_num "$1" && is_num "$2" && awk -v b="$2" 'BEGIN { exit !(b > 0) }'; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; else echo n/a; fi; }
mul() { if is_num "$1"; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", a * b }'; else echo n/a; fi; }
us_to_ms() { if is_num "$1"; then awk -v x="$1" 'BEGIN { printf "%.1f", x / 1000 }'; else echo n/a; fi; }
gt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }

# ---------------------------------------------------------------- PostgreSQL binaries
find_pgbin() {
  local d
  # shellcheck disable=SC2012 # version directories, no odd names
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
  # Jobs still running: loaders (interrupted load), or the timeout around a detflow run
  # (it passes the signal on to detflow, which stops its node processes).
  local jobs_left
  jobs_left=$(jobs -p 2>/dev/null || true)
  # shellcheck disable=SC2086 # one pid per word
  [ -z "$jobs_left" ] || kill $jobs_left 2>/dev/null || true
  [ -z "$jobs_left" ] || wait 2>/dev/null || true
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

# bg_run OUT ERR CMD... : runs CMD under a timeout, stdout to OUT and stderr to ERR, as a
# background job waited for, so that Ctrl-C or TERM reaches the script (and its cleanup)
# at once instead of after the run. Returns CMD's status.
bg_run() {
  local out=$1 err=$2 rc=0; shift 2
  timeout "$((D * 3 + 300 + 30 * W))" "$@" >"$out" 2>"$err" &
  wait "$!" || rc=$?
  return "$rc"
}

# ---------------------------------------------------------------- detflow binaries
# Built first, before PostgreSQL, so that a build failure shows at once.
DETFLOW_READY=0
DETFLOW_BUILD=n/a
if [ "$SKIP_DETFLOW" = 1 ]; then
  DETFLOW_BUILD="skipped (--skip-detflow)"
  log "--skip-detflow: detflow columns are n/a"
else
  build_ok=1
  if [ "$NO_BUILD" = 1 ]; then
    log "--no-build: using $BIN/detflow as it is"
  else
    log "building detflow (release): cargo build --release -p detflow-node -p detflow-benches"
    if ! (cd "$ROOT" && cargo build --release -p detflow-node -p detflow-benches) >"$TMP/cargo.log" 2>&1; then
      build_ok=0
      log "cargo build failed; detflow columns will be n/a. Last lines:"
      tail -5 "$TMP/cargo.log" >&2
    fi
  fi
  if [ "$build_ok" = 1 ] && [ -x "$BIN/detflow" ]; then
    DETFLOW_READY=1
    DETFLOW_BUILD="target/release/detflow modified $(date -u -r "$BIN/detflow" +%Y-%m-%dT%H:%MZ), tree at $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    log "detflow: $DETFLOW_BUILD"
  elif [ "$build_ok" = 1 ]; then
    log "no $BIN/detflow after the build; detflow columns will be n/a"
  fi
  [ -x "$BIN/tpcc-serial" ] || log "no $BIN/tpcc-serial; the serial bound will be n/a"
  unset build_ok
fi

# ---------------------------------------------------------------- PostgreSQL
SYNCS=(on off)
MIXES=(mix50 full)
set_mix_files() { # set_mix_files MIX: MIX_FILES=(pgbench script@weight...) of the mix
  case $1 in
    mix50) MIX_FILES=("$HERE/new_order.pgbench@50" "$HERE/payment.pgbench@50") ;;
    full) MIX_FILES=("$HERE/new_order.pgbench@45" "$HERE/payment.pgbench@43" \
      "$HERE/order_status.pgbench@4" "$HERE/delivery.pgbench@4" "$HERE/stock_level.pgbench@4") ;;
    *) die "unknown mix $1" ;;
  esac
}
mix_label() { if [ "$1" = mix50 ]; then echo "new-order+payment 50/50"; else echo "full mix 45/43/4/4/4"; fi; }
mix_detflow() { if [ "$1" = mix50 ]; then echo new-order-payment; else echo standard; fi; }

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
    echo "max_connections = $((CMAX + 10))"
    cat "$HERE/postgresql.bench.conf"
  } >>"$PGDATA_DIR/postgresql.conf"
  as_server_user "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$TMP/server.log" -w -t 120 start >/dev/null \
    || { cat "$TMP/server.log" >&2 2>/dev/null; die "PostgreSQL did not start"; }
  SERVER_UP=1

  PSQL=("$PSQL_BIN" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
  "${PSQL[@]}" -d postgres -c 'CREATE DATABASE tpcc' >/dev/null
  PG_SYNC_DEFAULT=$(PGOPTIONS='' "${PSQL[@]}" -d postgres -Atc 'SHOW synchronous_commit')
  log "server default synchronous_commit = $PG_SYNC_DEFAULT; each run sets it for its own sessions with PGOPTIONS"

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
    log "warm-up: full mix, $CMAX clients, for ${WARMUP}s (not measured)"
    local wargs=() s
    set_mix_files full
    for s in "${MIX_FILES[@]}"; do wargs+=(-f "$s"); done
    PGOPTIONS='' "$PGBENCH" -h 127.0.0.1 -p "$PORT" -U postgres -n -c "$CMAX" -j 2 -T "$WARMUP" -M prepared \
      --max-tries="$MAX_TRIES" -D W="$W" "${wargs[@]}" \
      tpcc >"$TMP/pgbench_warmup.out" 2>&1 || log "warm-up pgbench exited with an error (see below)"
    sed -n 's/^tps = /    warm-up tps = /p' "$TMP/pgbench_warmup.out" >&2
  fi
  # Each count runs synchronous_commit on, then off, back to back, so the pair sees the same
  # database (it grows with every run).
  local mix c sync
  for mix in "${MIXES[@]}"; do
    for c in "${CLIENTS[@]}"; do
      for sync in "${SYNCS[@]}"; do
        set_mix_files "$mix"
        pg_run "$mix" "$c" "$sync" "${MIX_FILES[@]}"
      done
    done
  done
  DB_SIZE_AFTER=$("${PSQL[@]}" -d tpcc -Atc "SELECT pg_size_pretty(pg_database_size('tpcc'))")

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
# Shares are of one core, as `detflow bench` prints them: N cores = N x 100%.
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

# Results, keyed MIX_CLIENTS_SYNC (PostgreSQL) and MIX_CLIENTS (detflow).
declare -A PG_TPS=() PG_PROCESSED=() PG_FAILED=() PG_RETRIED=() PG_RETRIES=() PG_LAT=() \
  PG_P50=() PG_P99=() PG_PER=() PG_CPU=() PG_LOAD=() PG_SHOWN=()
declare -A DF_TPS=() DF_TPMC=() DF_P50=() DF_P99=() DF_LOADS=() DF_CHECK=() DF_CPU=() \
  DF_OTHER=() DF_LOAD=() SER_TPS=()

# pg_run MIX CLIENTS SYNC SCRIPT@WEIGHT... : one measured pgbench run with
# synchronous_commit=SYNC for its sessions; sets PG_*[MIX_CLIENTS_SYNC].
pg_run() {
  local mix=$1 c=$2 sync=$3; shift 3
  local key=${mix}_${c}_${sync} args=() s
  for s in "$@"; do args+=(-f "$s"); done
  # The setting reaches every session of the run through libpq's PGOPTIONS (no restart, no
  # server-wide change); a psql session opened the same way shows that it took effect.
  local opts="-c synchronous_commit=$sync" shown
  shown=$(PGOPTIONS=$opts "${PSQL[@]}" -d tpcc -Atc 'SHOW synchronous_commit')
  [ "$shown" = "$sync" ] \
    || die "PGOPTIONS='$opts' did not take effect: SHOW synchronous_commit says '$shown'"
  PG_SHOWN[$key]=$shown
  "${PSQL[@]}" -d tpcc -c CHECKPOINT >/dev/null
  PG_LOAD[$key]=$(cut -d' ' -f1 /proc/loadavg)
  log "pgbench $mix, synchronous_commit=$shown (SHOW with PGOPTIONS='$opts'): -c $c -j 2 -T $D -M prepared --max-tries=$MAX_TRIES (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  local out=$TMP/pgbench_$key.out err=$TMP/pgbench_$key.err rc=0
  mkdir -p "$TMP/log_$key"
  local busy0 pg0 ch0 busy1 pg1 ch1
  busy0=$(cpu_busy); pg0=$(pg_jiffies); children_seconds ch0
  PGOPTIONS=$opts "$PGBENCH" -h 127.0.0.1 -p "$PORT" -U postgres -n \
    -c "$c" -j 2 -T "$D" -M prepared --max-tries="$MAX_TRIES" --failures-detailed \
    -P 10 -D W="$W" --log --log-prefix="$TMP/log_$key/tx" "${args[@]}" tpcc \
    >"$out" 2>"$err" || rc=$?
  busy1=$(cpu_busy); pg1=$(pg_jiffies); children_seconds ch1
  # Over the run: server, pgbench, everything else, in % of one core.
  local cpu
  cpu=$(awk -v b="$((busy1 - busy0))" -v p="$((pg1 - pg0))" -v c0="$ch0" -v c1="$ch1" -v hz="$CLK_TCK" \
          -v d="$D" 'BEGIN {
      core = d * hz; c = (c1 - c0) * hz; o = b - p - c; if (o < 0) o = 0
      printf "server %.0f%%, pgbench %.0f%%, other %.0f%%", 100 * p / core, 100 * c / core, 100 * o / core }')
  PG_CPU[$key]=$cpu
  grep -E '^progress:' "$err" | sed 's/^/    /' >&2 || true
  if [ "$rc" -ne 0 ]; then
    log "pgbench $key exited with status $rc; its errors:"
    grep -vE '^progress:' "$err" | tail -20 >&2 || true
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
  read -r p50 p99 < <(cat "$TMP"/log_"$key"/tx* 2>/dev/null | awk '$3 ~ /^[0-9]+$/ { print $3 }' \
    | sort -n | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "n/a n/a"; exit }
        i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
        printf "%.1f %.1f\n", v[i50] / 1000, v[i99] / 1000 }')
  rm -rf "$TMP/log_$key"
  PG_TPS[$key]=${tps:-n/a}
  PG_PROCESSED[$key]=${processed:-n/a}
  PG_FAILED[$key]=${failed:-n/a}
  PG_RETRIED[$key]=${retried:-n/a}
  PG_RETRIES[$key]=${retries:-n/a}
  PG_LAT[$key]=${lat:-n/a}
  PG_P50[$key]=${p50:-n/a}
  PG_P99[$key]=${p99:-n/a}
  # Per-script throughput (script order as given): "name=tps" words.
  local per
  per=$(awk '/^SQL script [0-9]+:/ { n = $NF; sub(/.*\//, "", n); sub(/\.pgbench$/, "", n) }
             /^ - [0-9]+ transactions .*tps = / { t = $0; sub(/.*tps = /, "", t); sub(/\).*/, "", t); printf "%s%s=%.0f", sep, n, t; sep = " " }' "$out")
  PG_PER[$key]=$per
  log "pgbench $key: tps=${tps:-n/a} processed=${processed:-n/a} failed=${failed:-n/a} retried=${retried:-n/a} retries=${retries:-n/a} latency avg=${lat:-n/a} ms p50=${p50:-n/a} ms p99=${p99:-n/a} ms; per script: $per; CPU (% of one core): $cpu"
}

# ---------------------------------------------------------------- detflow
# df_run MIX CLIENTS : one `detflow bench tpcc` (its own fresh local cluster); sets DF_*[MIX_CLIENTS].
df_run() {
  local mix=$1 c=$2 key=${1}_${2}
  local args=(bench tpcc --warehouses "$W" --duration "${D}s" --clients "$c" --mix "$(mix_detflow "$mix")" --json)
  [ -z "$REPLICATION" ] || args+=(--replication "$REPLICATION")
  DF_LOAD[$key]=$(cut -d' ' -f1 /proc/loadavg)
  log "detflow ${args[*]} (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  local out=$TMP/detflow_$key.json err=$TMP/detflow_$key.err rc=0
  local busy0 ch0 t0 busy1 ch1 t1
  busy0=$(cpu_busy); children_seconds ch0; t0=$(date +%s.%N)
  bg_run "$out" "$err" "$BIN/detflow" "${args[@]}" || rc=$?
  busy1=$(cpu_busy); children_seconds ch1; t1=$(date +%s.%N)
  # detflow prints its per-process split of the measured run on stderr with --json:
  # "CPU (2 cores = 200%): driver 23%, node-1 53%, ...". Processes outside detflow over
  # the whole invocation (loading included), in % of one core, to catch competing work.
  local cpu
  cpu=$(sed -n 's/^CPU ([^)]*): //p' "$err" | tail -1)
  DF_CPU[$key]=${cpu:-n/a}
  DF_OTHER[$key]=$(awk -v b="$((busy1 - busy0))" -v c0="$ch0" -v c1="$ch1" -v hz="$CLK_TCK" \
      -v t0="$t0" -v t1="$t1" 'BEGIN {
    o = b / hz - (c1 - c0); if (o < 0) o = 0; w = t1 - t0; if (w <= 0) w = 1
    printf "%.0f%%", 100 * o / w }')
  DF_TPS[$key]=n/a DF_TPMC[$key]=n/a DF_P50[$key]=n/a DF_P99[$key]=n/a DF_LOADS[$key]=n/a
  if ! grep -q '{' "$out" 2>/dev/null; then
    DF_CHECK[$key]="failed (exit $rc)"
    log "detflow $key failed (status $rc): $(grep -v '^CPU (' "$err" | tail -3 | tr '\n' ' ')"
    return 0
  fi
  DF_TPS[$key]=$(json_field throughput <"$out")
  DF_TPMC[$key]=$(json_field tpmc <"$out")
  DF_P50[$key]=$(us_to_ms "$(json_field latency_us.0 <"$out")")
  DF_P99[$key]=$(us_to_ms "$(json_field latency_us.2 <"$out")")
  DF_LOADS[$key]=$(fmt "$(json_field load_seconds <"$out")")
  case $rc in
    0) DF_CHECK[$key]=ok ;;
    # detflow exits 1 when a consistency check failed; the figures are kept but flagged.
    1) DF_CHECK[$key]="CONSISTENCY CHECK FAILED"
       log "detflow $key: the consistency check failed (exit 1): $(tail -3 "$err" | tr '\n' ' ')" ;;
    *) DF_CHECK[$key]="exit $rc" ;;
  esac
  log "detflow $key: txn/s=$(fmt "${DF_TPS[$key]}") tpmC=$(fmt "${DF_TPMC[$key]}") p50=${DF_P50[$key]} ms p99=${DF_P99[$key]} ms, loaded in ${DF_LOADS[$key]}s, check ${DF_CHECK[$key]}; CPU (% of one core): ${DF_CPU[$key]}; other processes over the invocation: ${DF_OTHER[$key]}"
}

run_detflow() {
  local mix c rc
  for mix in "${MIXES[@]}"; do
    for c in "${CLIENTS[@]}"; do
      df_run "$mix" "$c"
    done
    SER_TPS[$mix]=n/a
    if [ -x "$BIN/tpcc-serial" ]; then
      log "tpcc-serial --mix $(mix_detflow "$mix")"
      rc=0
      bg_run "$TMP/serial_$mix.json" "$TMP/serial_$mix.err" "$BIN/tpcc-serial" --warehouses "$W" \
        --mix "$(mix_detflow "$mix")" --seconds 10 --json || rc=$?
      if [ "$rc" -eq 0 ] && grep -q '{' "$TMP/serial_$mix.json"; then
        SER_TPS[$mix]=$(json_field throughput <"$TMP/serial_$mix.json")
      else
        log "tpcc-serial $mix failed (status $rc): $(tail -3 "$TMP/serial_$mix.err" | tr '\n' ' ')"
      fi
    fi
  done
}

# ---------------------------------------------------------------- main
run_postgres
if [ "$DETFLOW_READY" = 1 ]; then
  run_detflow
fi

# ---------------------------------------------------------------- report
# tps_of SYSTEM MIX CLIENTS / p50_of ...: SYSTEM is df, on or off.
tps_of() { if [ "$1" = df ]; then echo "${DF_TPS[${2}_${3}]:-n/a}"; else echo "${PG_TPS[${2}_${3}_${1}]:-n/a}"; fi; }
p50_of() { if [ "$1" = df ]; then echo "${DF_P50[${2}_${3}]:-n/a}"; else echo "${PG_P50[${2}_${3}_${1}]:-n/a}"; fi; }
cell() { # cell SYSTEM MIX CLIENTS: "txn/s (p50 ms)"
  local t
  t=$(tps_of "$@")
  if is_num "$t"; then echo "$(fmt "$t") ($(p50_of "$@") ms)"; else echo n/a; fi
}
best_of() { # best_of SYSTEM MIX: "txn/s clients" at the best client count, or "n/a n/a"
  local c t bt=n/a bc=n/a
  for c in "${CLIENTS[@]}"; do
    t=$(tps_of "$1" "$2" "$c")
    if is_num "$t" && { ! is_num "$bt" || gt "$t" "$bt"; }; then bt=$t; bc=$c; fi
  done
  echo "$bt $bc"
}
system_label() {
  case $1 in
    df) echo "detflow (${DF_R_LABEL})" ;;
    on) echo "PostgreSQL synchronous_commit=on (fair pairing)" ;;
    off) echo "PostgreSQL synchronous_commit=off (reference)" ;;
  esac
}
if [ -n "$REPLICATION" ]; then DF_R_LABEL="R=$REPLICATION"; else DF_R_LABEL="R=2, detflow's default"; fi

report() {
  echo "## TPC-C peer comparison: W=$W, ${D}s per run, clients ${CLIENTS[*]}"
  echo
  echo "Machine: nproc=$NPROC, CPU: ${CPU_MODEL:-unknown}, ${MEM_GIB} GiB RAM, load average before start: $LOAD_BEFORE; PostgreSQL $PG_VERSION; detflow: $DETFLOW_BUILD$([ "$SKIP_DETFLOW" = 1 ] || echo ", replication $DF_R_LABEL"); $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Which pairing is fair: detflow acknowledges a transaction only after a quorum of its log replicas has fsynced the epoch holding it, so the like-for-like PostgreSQL column is **synchronous_commit=on** (COMMIT returns after its WAL is fsynced). synchronous_commit=off (COMMIT returns before the WAL flush; a crash loses recently acknowledged transactions) is shown for reference only. Both columns: every transaction SERIALIZABLE, fsync on; the setting is per session (PGOPTIONS), checked with SHOW before each run."
  echo
  echo "Cells are txn/s (p50 latency). Each count runs PostgreSQL with synchronous_commit on, then off, on the same database; detflow starts a fresh local cluster (3 node processes, $DF_R_LABEL, fsync on) per run, after PostgreSQL has been stopped."
  local mix c on off df b s t bc serx lo hi list r
  for mix in "${MIXES[@]}"; do
    echo
    echo "### $(mix_label "$mix")"
    echo
    echo "| clients | detflow txn/s (p50) | PostgreSQL sync on txn/s (p50) | PostgreSQL sync off txn/s (p50) | detflow / PG on | detflow / PG off |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
    for c in "${CLIENTS[@]}"; do
      df=$(tps_of df "$mix" "$c"); on=$(tps_of on "$mix" "$c"); off=$(tps_of off "$mix" "$c")
      echo "| $c | $(cell df "$mix" "$c") | $(cell on "$mix" "$c") | $(cell off "$mix" "$c") | $(ratio "$df" "$on") | $(ratio "$df" "$off") |"
    done
    echo
    echo "Summary, $(mix_label "$mix"):"
    echo
    for s in df on off; do
      read -r t bc <<<"$(best_of "$s" "$mix")"
      if is_num "$t"; then
        echo "- $(system_label "$s"): best $(fmt "$t") txn/s at $bc clients (p50 $(p50_of "$s" "$mix" "$bc") ms)"
      else
        echo "- $(system_label "$s"): n/a"
      fi
    done
    read -r b _ <<<"$(best_of df "$mix")"
    read -r on _ <<<"$(best_of on "$mix")"
    read -r off _ <<<"$(best_of off "$mix")"
    echo "- best against best: detflow / PG on $(ratio "$b" "$on"), detflow / PG off $(ratio "$b" "$off")"
    list="" lo="" hi=""
    for c in "${CLIENTS[@]}"; do
      r=$(ratio "$(tps_of df "$mix" "$c")" "$(tps_of on "$mix" "$c")")
      list+="${list:+, }$c: $r"
      if is_num "$r"; then
        if [ -z "$lo" ] || gt "$lo" "$r"; then lo=$r; fi
        if [ -z "$hi" ] || gt "$r" "$hi"; then hi=$r; fi
      fi
    done
    if [ -n "$lo" ]; then
      echo "- at equal client counts, detflow / PG on: $list (from $lo to $hi)"
    else
      echo "- at equal client counts, detflow / PG on: $list"
    fi
    serx=$(mul "${SER_TPS[$mix]:-n/a}" "$NPROC")
    echo "- serial bound (tpcc-serial, one core, no sequencing, network or durability): $(fmt "${SER_TPS[$mix]:-n/a}") txn/s, × $NPROC cores $serx; detflow best / (serial × cores) $(ratio "$b" "$serx")"
  done
  echo
  echo "### CPU per process, every run (% of one core: $NPROC cores = $((NPROC * 100))%)"
  echo
  echo "detflow: its own split of the measured run (\`detflow bench\`: the load driver and each node process); \"other\" is every process outside detflow over the whole invocation, loading included. PostgreSQL: the server (postmaster and backends), pgbench, and everything else over the run. High \"other\" means something else competed for the cores."
  echo
  echo "| mix | clients | detflow | detflow: other | PostgreSQL sync on | PostgreSQL sync off |"
  echo "| --- | ---: | --- | ---: | --- | --- |"
  for mix in "${MIXES[@]}"; do
    for c in "${CLIENTS[@]}"; do
      echo "| $mix | $c | ${DF_CPU[${mix}_${c}]:-n/a} | ${DF_OTHER[${mix}_${c}]:-n/a} | ${PG_CPU[${mix}_${c}_on]:-n/a} | ${PG_CPU[${mix}_${c}_off]:-n/a} |"
    done
  done
  echo
  echo "### PostgreSQL details"
  echo
  echo "pgbench -c C -j 2 -T $D -M prepared --max-tries=$MAX_TRIES, after one ${WARMUP}s unmeasured warm-up (full mix, $CMAX clients); txn/s counts committed transactions, New-Orders rolled back for an unused item included; synchronous_commit is what SHOW returned in a session opened with the run's PGOPTIONS (server default: ${PG_SYNC_DEFAULT:-n/a}); load $W warehouses in ${LOAD_SECONDS}s, $DB_SIZE (${DB_SIZE_AFTER:-n/a} after all runs)."
  echo
  echo "| mix | clients | synchronous_commit | txn/s | committed | failed | retried txns | total retries | latency avg ms | p50 ms | p99 ms | per script txn/s | 1-min load before |"
  echo "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
  local k
  for mix in "${MIXES[@]}"; do
    for c in "${CLIENTS[@]}"; do
      for s in "${SYNCS[@]}"; do
        k=${mix}_${c}_${s}
        echo "| $mix | $c | ${PG_SHOWN[$k]:-n/a} | $(fmt "${PG_TPS[$k]:-n/a}") | ${PG_PROCESSED[$k]:-n/a} | ${PG_FAILED[$k]:-n/a} | ${PG_RETRIED[$k]:-n/a} | ${PG_RETRIES[$k]:-n/a} | ${PG_LAT[$k]:-n/a} | ${PG_P50[$k]:-n/a} | ${PG_P99[$k]:-n/a} | ${PG_PER[$k]:-n/a} | ${PG_LOAD[$k]:-n/a} |"
      done
    done
  done
  echo
  echo "### detflow details"
  echo
  echo "\`target/release/detflow bench tpcc --warehouses $W --duration ${D}s --clients C --mix new-order-payment|standard${REPLICATION:+ --replication $REPLICATION} --json\`; txn/s is \`throughput\` (committed plus New-Orders rolled back for an unused item), latencies over all transactions."
  echo
  echo "| mix | clients | txn/s | tpmC | p50 ms | p99 ms | cluster load s | check | CPU (% of one core) | 1-min load before |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |"
  for mix in "${MIXES[@]}"; do
    for c in "${CLIENTS[@]}"; do
      k=${mix}_${c}
      echo "| $mix | $c | $(fmt "${DF_TPS[$k]:-n/a}") | $(fmt "${DF_TPMC[$k]:-n/a}") | ${DF_P50[$k]:-n/a} | ${DF_P99[$k]:-n/a} | ${DF_LOADS[$k]:-n/a} | ${DF_CHECK[$k]:-n/a} | ${DF_CPU[$k]:-n/a} | ${DF_LOAD[$k]:-n/a} |"
    done
  done
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
