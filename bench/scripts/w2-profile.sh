#!/usr/bin/env bash
# Where each server's CPU goes at W2's maximum: a `perf record -C 0` profile of the
# server's CPU inside the closed-loop probe, read as samples per 1,000 messages.
#
#   bench/scripts/w2-profile.sh                                  # ringcast bun floor, 3 rounds
#   bench/scripts/w2-profile.sh --servers "ringcast baseline" --baseline /tmp/old-ringcast
#   bench/scripts/w2-profile.sh --servers "ringcast baseline bun floor" \
#     --baseline target/release/ringcast --baseline-args "--config bench/configs/dev-history-1.toml"
#
# Options: --servers "ringcast bun floor baseline"  --baseline BIN  --baseline-args "FLAGS"
#          (more `serve` flags for the baseline, e.g. a config file)  --rounds R
#          --subscribers N (W2 connections, default 10000)  --freq HZ (default 4000)
#
# Each server runs fresh, pinned to CPU 0 (Ringcast with --shards 1), the load generator
# on CPU 1, servers taking turns round by round. The load generator sets up its
# connections, then starts the probe at an agreed wall-clock time (`--start-at-ms`);
# `perf record -C 0` (every task on CPU 0: the server's threads, the kernel work its
# sends cause, idle) and `/proc/stat` cover seconds 1 to 4 of the 5 s probe. Results:
# bench/results/<stamp>-w2profile/{<server>-r<round>.{perf.data,json,stat},summary.md};
# `bench/scripts/w2-profile.py DIR` writes the summary again. Needs perf and
# permission to record system-wide (root, or kernel.perf_event_paranoid <= 0).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

SERVERS="ringcast bun floor"
BASELINE=""
BASELINE_ARGS=""
ROUNDS=3
SUBS=10000
FREQ=4000
while [ $# -gt 0 ]; do
  case "$1" in
    --servers) SERVERS=$2; shift 2 ;;
    --baseline) BASELINE=$2; shift 2 ;;
    --baseline-args) BASELINE_ARGS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --subscribers) SUBS=$2; shift 2 ;;
    --freq) FREQ=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v perf > /dev/null || { echo "perf not found" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "needs 2 CPUs: the server on CPU 0, the load generator on CPU 1" >&2; exit 1; }
case " $SERVERS " in
  *" baseline "*) [ -x "$BASELINE" ] || { echo "--baseline BIN is needed for server baseline" >&2; exit 2; } ;;
esac

OUT="$ROOT/bench/results/$(date +%Y%m%d-%H%M%S)-w2profile"
mkdir -p "$OUT"
echo "results in $OUT"
cargo build --release -p ringcast-bench -p ringcast-engine > "$OUT/build.log" 2>&1 \
  || { echo "build failed (see $OUT/build.log)" >&2; exit 1; }
case " $SERVERS " in
  *" bun "*) (cd bench/peers/bun && npm install --no-audit --no-fund --loglevel=error > "$OUT/install-bun.log" 2>&1) \
    || { echo "npm install of the Bun peer failed (see $OUT/install-bun.log)" >&2; exit 1; } ;;
esac
ulimit -n "$(ulimit -Hn)" 2> /dev/null || true

PIN_SERVER="taskset -c 0"
SHARDS=1
declare -A BROKEN
SRV_PID=""
DATA_DIR=""
# shellcheck source=lib/server.sh
. "$ROOT/bench/scripts/lib/server.sh"
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

now_ms() { date +%s%3N; }

# profile_one NAME ROUND: one server, one probe, one profile.
profile_one() {
  local name=$1 round=$2 tag="$1-r$2"
  if ! start_server "$name" "$OUT/$tag.server.log"; then
    echo "$name: $SRV_ERR" >&2
    return 1
  fi
  # Set-up of 10k connections takes ~1 s here; the JSON says how late it was.
  local start_at=$(( $(now_ms) + 8000 ))
  taskset -c 1 "$ROOT/target/release/loadgen" --url "$SRV_URL" --protocol "$SRV_PROTO" \
    --label "$name" --workload w2 --subscribers "$SUBS" --payload 64 --burst 1 \
    --duration-s 5 --warmup-s 1 --server-pid "$SRV_PID" --start-at-ms "$start_at" --json \
    2> "$OUT/$tag.loadgen.log" | tail -1 > "$OUT/$tag.json" &
  local lg=$!
  local wait_ms=$(( start_at + 1000 - $(now_ms) ))
  [ "$wait_ms" -gt 0 ] && sleep "$(printf '%d.%03d' $((wait_ms / 1000)) $((wait_ms % 1000)))"
  grep '^cpu0 ' /proc/stat > "$OUT/$tag.stat"
  perf record -q -C 0 -F "$FREQ" -o "$OUT/$tag.perf.data" -- sleep 3 > /dev/null 2>&1
  grep '^cpu0 ' /proc/stat >> "$OUT/$tag.stat"
  wait "$lg"
  stop_server
}

for round in $(seq "$ROUNDS"); do
  for name in $SERVERS; do
    echo "round $round: $name"
    profile_one "$name" "$round"
  done
done
python3 "$ROOT/bench/scripts/w2-profile.py" "$OUT" | tee "$OUT/summary.md"
