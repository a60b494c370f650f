#!/usr/bin/env bash
# REN (SSE) fan-out: one POST /api/ren/events → N streams, beside W1 (the same fan-out
# over WebSocket) on the same server in the same run; optionally Nginx + Nchan as a peer;
# and the cost of REN mirroring on the publish path (ws-publish with no REN stream vs
# with one stream open, so the tenant mirrors every publish).
#
#   bench/scripts/ren.sh                      # N = 1k and 10k, K = 1 and 16, 5 s each
#   bench/scripts/ren.sh --nchan              # also Nchan (installs nginx and
#                                             # libnginx-mod-nchan with apt-get if missing)
# Options: --subscribers "1000 10000"  --bursts "1 16"  --duration-s S  --repeat R
#
# Server on CPU 0 (one shard / one nginx worker), load generator on CPU 1 (taskset).
# Results: bench/results/ren-<stamp>/{results.jsonl,table.md}.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
SUBS="1000 10000"
BURSTS="1 16"
DURATION=5
REPEAT=1
NCHAN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --subscribers) SUBS=$2; shift ;;
    --bursts) BURSTS=$2; shift ;;
    --duration-s) DURATION=$2; shift ;;
    --repeat) REPEAT=$2; shift ;;
    --nchan) NCHAN=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build --release -q -p ringcast-engine --bin ringcast -p ringcast-bench --bin loadgen || exit 1
RINGCAST=$TARGET/release/ringcast
LOADGEN=$TARGET/release/loadgen
OUT=$ROOT/bench/results/ren-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
PORT=21300  # below the ephemeral range: 10k client sockets in TIME_WAIT cannot hold it

free_port() { PORT=$((PORT + 1)); }

start_ringcast() {
  free_port
  DATA=$(mktemp -d)
  taskset -c 0 "$RINGCAST" serve --dev --listen 127.0.0.1:$PORT --shards 1 --data-dir "$DATA" \
    >"$OUT/ringcast-$PORT.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    grep -q "listening" "$OUT/ringcast-$PORT.log" && return 0
    sleep 0.05
  done
  echo "ringcast did not start" >&2
  return 1
}

start_nchan() {
  free_port
  PREFIX=$(mktemp -d)
  mkdir -p "$PREFIX/logs"
  cat >"$PREFIX/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $PREFIX/nginx.pid;
error_log $PREFIX/logs/error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 1000000000;
  keepalive_timeout 600s;
  server {
    listen 127.0.0.1:$PORT;
    location = /api/maravilla/ren { nchan_subscriber eventsource; nchan_channel_id bench; }
    location = /api/ren/events { nchan_publisher; nchan_channel_id bench; }
  }
}
EOF
  taskset -c 0 nginx -p "$PREFIX" -c "$PREFIX/nginx.conf" -g 'daemon off;' \
    >"$OUT/nchan-$PORT.log" 2>&1 &
  NGINX_PID=$!
  for _ in $(seq 200); do
    SERVER_PID=$(pgrep -P "$NGINX_PID" | head -1)
    [ -n "$SERVER_PID" ] && return 0
    sleep 0.05
  done
  cat "$OUT/nchan-$PORT.log" "$PREFIX/logs/error.log" >&2
  echo "nginx did not start" >&2
  return 1
}

stop() {
  kill "${NGINX_PID:-$SERVER_PID}" 2>/dev/null
  wait "${NGINX_PID:-$SERVER_PID}" 2>/dev/null
  unset NGINX_PID
}

run() { # label workload subscribers burst [extra…]
  local label=$1 workload=$2 n=$3 k=$4
  shift 4
  taskset -c 1 "$LOADGEN" --url ws://127.0.0.1:$PORT/_rt/ws --label "$label" --workload "$workload" \
    --subscribers "$n" --burst "$k" --payload 64 --duration-s "$DURATION" --warmup-s 1 \
    --server-pid "$SERVER_PID" --json "$@" | tail -1 | tee -a "$RESULTS"
}

if [ "$NCHAN" = 1 ] && ! [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
  echo "installing nginx and libnginx-mod-nchan (apt-get)" >&2
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  { $SUDO apt-get install -y -q nginx-light libnginx-mod-nchan >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 \
         && $SUDO apt-get install -y -q nginx-light libnginx-mod-nchan >/dev/null 2>&1; }; } \
    || { echo "could not install Nchan; skipping it" >&2; NCHAN=0; }
fi

for _ in $(seq "$REPEAT"); do
  for n in $SUBS; do
    for k in $BURSTS; do
      start_ringcast || exit 1
      run ringcast-sse ren-fanout "$n" "$k"
      run ringcast-ws w1 "$n" "$k"
      stop
      if [ "$NCHAN" = 1 ]; then
        start_nchan && run nchan-sse ren-fanout "$n" "$k" --nchan
        stop
      fi
    done
  done
  # Mirroring cost: WebSocket publishes with no REN stream, then with one open.
  start_ringcast || exit 1
  run publish-no-ren ws-publish 0 1 --publishers 4
  curl -sN "http://127.0.0.1:$PORT/api/maravilla/ren?s=nothing" >/dev/null &
  CURL=$!
  sleep 0.5
  run publish-ren-open ws-publish 0 1 --publishers 4
  kill $CURL 2>/dev/null
  stop
done

python3 - "$RESULTS" >"$OUT/table.md" <<'EOF'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(xs): return statistics.median(xs) if xs else float("nan")
by = {}
for r in rows:
    by.setdefault((r["server"], r["workload"], r["subscribers"], r["burst"]), []).append(r)
print("| case | SSE deliveries/s | WS (W1) deliveries/s | SSE ÷ WS | SSE completion p50/p99 µs | SSE CPU-s/M | WS CPU-s/M | Nchan deliveries/s | SSE ÷ Nchan |")
print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
for n in sorted({r["subscribers"] for r in rows if r["workload"] == "ren-fanout"}):
    for k in sorted({r["burst"] for r in rows if r["workload"] == "ren-fanout"}):
        sse = by.get(("ringcast-sse", "ren-fanout", n, k), [])
        ws = by.get(("ringcast-ws", "w1", n, k), [])
        nc = by.get(("nchan-sse", "ren-fanout", n, k), [])
        d = lambda rs: med([r["deliveries_per_s"] for r in rs if "deliveries_per_s" in r]) if any("deliveries_per_s" in r for r in rs) else float("nan")
        c = lambda rs: med([r.get("cpu_s_per_m_deliveries", float("nan")) for r in rs])
        p = lambda rs, q: med([r.get(f"completion_{q}_us", 0) for r in rs])
        nchan = f"{d(nc):,.0f} | {d(sse)/d(nc):.2f}" if nc and d(nc) == d(nc) else "– | –"
        print(f"| N={n}, K={k} | {d(sse):,.0f} | {d(ws):,.0f} | {d(sse)/d(ws):.2f} | {p(sse,'p50'):,.0f} / {p(sse,'p99'):,.0f} | {c(sse):.3f} | {c(ws):.3f} | {nchan} |")
no = by.get(("publish-no-ren", "ws-publish", 0, 1), [])
yes = by.get(("publish-ren-open", "ws-publish", 0, 1), [])
if no and yes:
    f = lambda rs, k: med([r.get(k, float("nan")) for r in rs])
    print()
    print("| ws-publish, 4 connections | publishes/s | p50 µs | p99 µs | server CPU-s / M publishes |")
    print("|---|---:|---:|---:|---:|")
    for name, rs in [("no REN stream", no), ("one REN stream open (every publish mirrored)", yes)]:
        print(f"| {name} | {f(rs,'publishes_per_s'):,.0f} | {f(rs,'publish_latency_p50_us'):,.0f} | {f(rs,'publish_latency_p99_us'):,.0f} | {f(rs,'server_cpu_s_per_million'):.1f} |")
    print(f"| open ÷ none | {f(yes,'publishes_per_s')/f(no,'publishes_per_s'):.2f} | | | {f(yes,'server_cpu_s_per_million')/f(no,'server_cpu_s_per_million'):.2f} |")
EOF
cat "$OUT/table.md"
echo "results in $OUT"
