#!/usr/bin/env bash
# A/B of two Ringcast binaries under W2 at a fixed rate: history ring moves per append and
# CPU per message of the shard and store threads. Deterministic where the max-rate probe
# is not: the same messages reach both binaries, so a change in moves is counted, not
# inferred from a noisy msgs/s.
#
#   bench/scripts/w2-growth-ab.sh --a /tmp/old-ringcast --b target/release/ringcast
#
# Options: --a BIN --b BIN (both needed)  --rate R (W2's 100 %; the phases run at 50 %
#          and 80 % of it, default 40000)  --rounds N (default 3)  --subscribers N
#          (default 10000)
#
# Each round starts each binary fresh (`serve --dev --shards 1`, pinned to CPU 0, a new
# data directory), runs the load generator on CPU 1, then reads `/metrics`
# (`ringcast_history_appends_total`, `ringcast_history_growths_total`: a binary without
# that metric shows `na`; the growth count is copied on the shard's 1 s housekeeping
# tick, so the script waits 1.2 s before reading) and the threads' CPU ticks from /proc
# from the first publish on (the connections' set-up is left out). One line per binary
# and round on stdout. A server left running by a failure is stopped on exit.
# No -e: lib/server.sh's stop_server waits for a server killed by a signal (status 143).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
A="" B="" RATE=40000 ROUNDS=3 SUBS=10000
while [ $# -gt 0 ]; do
  case "$1" in
    --a) A=$(realpath -m "$2"); shift ;;
    --b) B=$(realpath -m "$2"); shift ;;
    --rate) RATE=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --subscribers) SUBS=$2; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ -x "$A" ] && [ -x "$B" ] || { echo "--a BIN and --b BIN are needed" >&2; exit 2; }
LOADGEN="$ROOT/target/release/loadgen"
[ -x "$LOADGEN" ] || (cd "$ROOT" && cargo build --release -p ringcast-bench --bin loadgen) || exit 1
# 10,000 connections on each side of loopback.
ulimit -n "$(ulimit -Hn)" 2> /dev/null || true

# Each binary runs as lib/server.sh's server "baseline" (BASELINE = that binary).
SRV_PID="" DATA_DIR="" BASELINE="" PIN_SERVER="taskset -c 0" SHARDS=1
declare -A BROKEN
# shellcheck source=lib/server.sh
. "$ROOT/bench/scripts/lib/server.sh"
LOG=$(mktemp)
trap 'stop_server || true; rm -f "$LOG"' EXIT

# "<thread name> <utime+stime ticks>" for every thread of process $1.
thread_ticks() {
  local t
  for t in /proc/"$1"/task/*; do
    echo "$(cat "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
  done
}

# Milliseconds of CPU between two thread_ticks listings, for threads matching $3.
ms_between() {
  paste <(echo "$1") <(echo "$2") |
    awk -v pat="$3" -v hz="$(getconf CLK_TCK)" '$1 ~ pat {s += $4 - $2} END {print s * 1000 / hz}'
}

one_round() {
  local label=$1 bin=$2 round=$3
  BASELINE=$bin
  start_server baseline "$LOG" || { echo "$label: $SRV_ERR" >&2; exit 1; }
  local pid=$SRV_PID http=${SRV_URL%/_rt/ws}
  http=${http/ws:/http:}
  local before after metrics appends growths lg start_at
  # The connections are set up first (~1 s here); the publishes start at start_at, and
  # the CPU is counted from then on.
  start_at=$(( $(date +%s%3N) + 6000 ))
  taskset -c 1 "$LOADGEN" --url "$SRV_URL" --protocol "$SRV_PROTO" \
    --workload w2 --subscribers "$SUBS" --payload 64 --burst 1 --rate "$RATE" \
    --duration-s 4 --warmup-s 0.5 --start-at-ms "$start_at" --json > /dev/null 2>&1 &
  lg=$!
  sleep "$(awk -v ms=$(( start_at - $(date +%s%3N) )) 'BEGIN {print (ms > 0 ? ms : 0) / 1000}')"
  before=$(thread_ticks "$pid")
  wait "$lg"
  after=$(thread_ticks "$pid")
  sleep 1.2
  metrics=$(curl -s --max-time 10 "$http/metrics")
  appends=$(echo "$metrics" | awk '/^ringcast_history_appends_total/ {s += $2} END {print s + 0}')
  growths=$(echo "$metrics" | awk '/^ringcast_history_growths_total/ {s += $2; n++} END {print n ? s : "na"}')
  python3 - "$label" "$round" "$appends" "$growths" \
    "$(ms_between "$before" "$after" shard)" "$(ms_between "$before" "$after" store)" <<'PY'
import sys
label, rnd, appends, growths, shard, store = sys.argv[1:]
a = int(appends) or 1
moves = "na" if growths == "na" else f"{int(growths) / a * 1000:.1f}"
print(f"{label} r{rnd}: {a} appends, moves per 1,000 appends {moves}, "
      f"shard CPU ms per 1,000 msgs {float(shard) / a * 1000:.2f}, "
      f"store thread {float(store) / a * 1000:.3f}")
PY
  stop_server
}

for round in $(seq "$ROUNDS"); do
  one_round a "$A" "$round"
  one_round b "$B" "$round"
done
