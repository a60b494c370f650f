#!/usr/bin/env bash
# Side-by-side comparison: Ringcast vs the floor vs peers, one server at a time.
#
#   bench/scripts/compare.sh            # default matrix, a few minutes
#   bench/scripts/compare.sh --quick    # under a minute (after the first build/install)
#
# Options: --servers "ringcast floor node-ws socketio bun"  --workloads "w1 w5 w3 w2 w6 w4"
#          --duration-s S  --subscribers "100 1000 10000" (W1's subscribers; given, also
#          W2's and W6's connections, a case per number, else 10000)
#          --bursts "1 16"  --payloads "64"
#          --repeat R (each case R times, servers taking turns)  --shards N (Ringcast)
#          --baseline BIN (adds server "baseline": another ringcast binary, e.g. the last
#          commit's, for an A/B of an engine change in one run)
#          --write-each (W1: the load generator writes each publish with its own
#          `write`, a TCP segment each, instead of a burst's K in one)
#          --w1-publishers P (W1: P publisher connections, a burst in flight on each)
#          --w5-connections "1000 10000" (W5: connections per case)
#          --w5-inflight N (W5: handshakes in flight, default 512; the outside measurement
#          of connection set-up used 5,000 connections with 128 in flight)
#          --w2-max R (W2/W6: take R msgs/s as every server's maximum instead of probing
#          it, so W2's 50 % and 80 % phases and W6's two at 80 % run at the same rates for
#          all of them)
#          --latency-trace (W2/W6: each case also writes its deliveries' latency traces,
#          <server>-<workload>-r<round>.<phase>.tsv; read them with latency-gaps.py)
#
# Every server runs pinned to CPU 0 and the load generator to CPU 1 (taskset), with the
# same workload and payloads; each server is started fresh for every case and always
# stopped afterwards. Results: bench/results/<stamp>/{results.jsonl,table.md,*.log}
# (the folder BENCH_RESULTS instead of bench/results, when set).
# A server that fails to build, install or start gets a row saying so; the run goes on.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ORIG_ARGS="$*"
cd "$ROOT"
# Where cargo puts what it builds: `CARGO_TARGET_DIR` when set (relative to ROOT, as cargo
# reads it from here), so a worktree with a target directory of its own runs its own
# binaries, not those of another build (found in review: target/release was hard-coded).
REL="$(realpath -m "${CARGO_TARGET_DIR:-target}")/release"

SERVERS="ringcast floor node-ws socketio bun"
WORKLOADS="w1 w5"
SUBS="100 1000 10000"
BURSTS="1 16"
PAYLOADS="64"
W5_SUBS="1000 10000"
W5_EXTRA=""
W2_EXTRA=""
W3_SUBS="100"
W3_RATE=10000
W2_SUBS=10000
DURATION=3
WARMUP=1
QUICK=0
SHARDS=1
LOADGEN_EXTRA=""
REPEAT=1
BASELINE=""
TRACE=0

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --servers) SERVERS=$2; shift ;;
    --workloads) WORKLOADS=$2; shift ;;
    --subscribers) SUBS=$2; W2_SUBS=$2; shift ;;
    --bursts) BURSTS=$2; shift ;;
    --payloads) PAYLOADS=$2; shift ;;
    --duration-s) DURATION=$2; shift ;;
    --shards) SHARDS=$2; shift ;;
    --repeat) REPEAT=$2; shift ;;
    --baseline) BASELINE=$(realpath "$2"); shift ;;
    --write-each) LOADGEN_EXTRA="$LOADGEN_EXTRA --write-each" ;;
    --latency-trace) TRACE=1 ;;
    --w5-connections) W5_SUBS=$2; shift ;;
    --w5-inflight) W5_EXTRA="--max-inflight $2"; shift ;;
    --w2-max) W2_EXTRA="--rate $2"; shift ;;
    --w1-publishers) LOADGEN_EXTRA="$LOADGEN_EXTRA --publishers $2 --window $2"; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
# Listed or not, in whatever order the options came, a baseline runs once per round.
case " $SERVERS " in
  *" baseline "*)
    if [ -z "$BASELINE" ]; then echo "server baseline needs --baseline BIN" >&2; exit 2; fi ;;
  *) if [ -n "$BASELINE" ]; then SERVERS="$SERVERS baseline"; fi ;;
esac
if [ "$QUICK" = 1 ]; then
  SUBS="1000"; W5_SUBS="1000"; W3_SUBS="100"; W2_SUBS=2000; DURATION=1; WARMUP=0.2
fi

STAMP=$(date +%Y%m%d-%H%M%S)
OUT="${BENCH_RESULTS:-$ROOT/bench/results}/$STAMP"
mkdir -p "$OUT"
JSONL="$OUT/results.jsonl"
: > "$JSONL"
echo "results in $OUT"

CPUS=$(nproc)
if [ "$CPUS" -ge 2 ]; then PIN_SERVER="taskset -c 0"; PIN_LOAD="taskset -c 1"
else PIN_SERVER=""; PIN_LOAD=""; echo "only $CPUS CPU: not pinning" >&2; fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- build ---------------------------------------------------------------------------
declare -A BROKEN
NOTES=""
# Other crates of the workspace may be mid-edit: a failed build falls back to the binaries
# already built, and the table says so.
if ! cargo build --release -p ringcast-bench > "$OUT/build-bench.log" 2>&1; then
  if [ -x "$REL/loadgen" ] && [ -x "$REL/floor" ] && [ -x "$REL/benchtable" ]; then
    NOTES+="- ringcast-bench did not build (build-bench.log); used the binaries from $(date -r "$REL/loadgen" '+%F %T')."$'\n'
  else
    echo "cannot build ringcast-bench (see $OUT/build-bench.log)" >&2
    exit 1
  fi
fi
if ! cargo build --release -p ringcast-engine > "$OUT/build-engine.log" 2>&1; then
  if [ -x "$REL/ringcast" ]; then
    NOTES+="- ringcast-engine did not build (build-engine.log); used $REL/ringcast from $(date -r "$REL/ringcast" '+%F %T')."$'\n'
  else
    BROKEN[ringcast]="build failed"
  fi
fi
echo -n "$NOTES"
LOADGEN="$REL/loadgen"

# --- peers: installed from the npm registry by this script ------------------------------
for peer in node-ws socketio bun; do
  case " $SERVERS " in *" $peer "*) ;; *) continue ;; esac
  dir="$ROOT/bench/peers/$peer"
  if ! command -v npm > /dev/null; then BROKEN[$peer]="npm not found"; continue; fi
  # Already installed from this package.json: skip the registry round trip.
  if [ -f "$dir/node_modules/.package-lock.json" ] && [ "$dir/node_modules/.package-lock.json" -nt "$dir/package.json" ]; then
    continue
  fi
  if ! (cd "$dir" && npm install --no-audit --no-fund --loglevel=error > "$OUT/install-$peer.log" 2>&1); then
    BROKEN[$peer]="npm install failed"
  fi
done
if [ -z "${BROKEN[bun]:-}" ] && ! "$ROOT/bench/peers/bun/node_modules/.bin/bun" --version > /dev/null 2>&1; then
  BROKEN[bun]="bun binary does not run"
fi

# --- one server at a time ------------------------------------------------------------
SRV_PID=""
DATA_DIR=""
# shellcheck source=lib/server.sh
. "$ROOT/bench/scripts/lib/server.sh"
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# case NAME WORKLOAD SUBS PAYLOAD BURST [extra loadgen args...]
run_case() {
  local name=$1 wl=$2 n=$3 payload=$4 burst=$5; shift 5
  local log="$OUT/$name-$wl-n$n-p$payload-k$burst.log"
  printf '%-9s %s N=%-6s payload=%-5s K=%-3s ' "$name" "$wl" "$n" "$payload" "$burst"
  if ! start_server "$name" "$log"; then
    printf '{"server":"%s","workload":"%s","subscribers":%s,"payload":%s,"burst":%s,"error":"%s"}\n' \
      "$name" "$wl" "$n" "$payload" "$burst" "$SRV_ERR" >> "$JSONL"
    echo "FAILED: $SRV_ERR"
    return
  fi
  local line
  line=$(timeout 300 $PIN_LOAD "$LOADGEN" --url "$SRV_URL" --protocol "$SRV_PROTO" --label "$name" \
    --workload "$wl" --subscribers "$n" --payload "$payload" --burst "$burst" \
    --duration-s "$DURATION" --warmup-s "$WARMUP" --server-pid "$SRV_PID" --json "$@" \
    2>> "$log" | tail -1)
  if [ -z "$line" ]; then
    line=$(printf '{"server":"%s","workload":"%s","subscribers":%s,"payload":%s,"burst":%s,"error":"loadgen gave no result (timeout or crash)"}' \
      "$name" "$wl" "$n" "$payload" "$burst")
  fi
  echo "$line" >> "$JSONL"
  stop_server
  case "$line" in
    *'"error"'*) echo "error (see $log)" ;;
    # W6's stalled phase sent each stopped reader no more than the buffers hold: its
    # closed and lost counts are no result (found in review: --quick's rows, silently).
    *'"stalled_past_buffers":0'*) echo "ok, but the stalled phase stayed within the buffers (see the table)" ;;
    *) echo ok ;;
  esac
}

# Servers take turns within each case, so drift on a shared box hits them alike.
# run_all WORKLOAD SUBS PAYLOAD BURST [extra...]
run_all() {
  local wl=$1; shift
  for r in $(seq "$REPEAT"); do
    for name in $SERVERS; do
      # The floor has no slow-consumer policy (a stopped reader's buffer grows without
      # bound): no W6.
      case "$wl" in w6) [ "$name" = floor ] && continue ;; esac
      if [ "$TRACE" = 1 ] && { [ "$wl" = w2 ] || [ "$wl" = w6 ]; }; then
        run_case "$name" "$wl" "$@" --latency-trace "$OUT/$name-$wl-r$r"
      else
        run_case "$name" "$wl" "$@"
      fi
    done
  done
}
for wl in $WORKLOADS; do
  case "$wl" in
    w1) for n in $SUBS; do for p in $PAYLOADS; do for k in $BURSTS; do
          run_all w1 "$n" "$p" "$k" $LOADGEN_EXTRA
        done; done; done ;;
    w3) for n in $W3_SUBS; do for p in $PAYLOADS; do
          run_all w3 "$n" "$p" 1 --rate "$W3_RATE"
        done; done ;;
    w5) for n in $W5_SUBS; do run_all w5 "$n" 64 1 $W5_EXTRA; done ;;
    w2) for n in $W2_SUBS; do run_all w2 "$n" 64 1 $W2_EXTRA; done ;;
    # `--w2-max` too: W6 takes it as the maximum, as W2 does (found in review: it got
    # none, so each server ran W6 at 80 % of its own probe).
    w6) for n in $W2_SUBS; do run_all w6 "$n" 64 1 $W2_EXTRA; done ;;
    w4) run_all w4 19000 64 1 --max-inflight 1024 ;;
    *) echo "unknown workload $wl" >&2 ;;
  esac
done

{
  echo "Run $STAMP on $(uname -n) ($(nproc) CPU, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
  echo "Command: \`bench/scripts/compare.sh $ORIG_ARGS\`"
  echo "Server pinned to CPU 0, load generator to CPU 1; Ringcast with --shards $SHARDS."
  echo
  echo -n "$NOTES"
  [ -n "$NOTES" ] && echo
  "$REL/benchtable" "$JSONL"
} > "$OUT/table.md"
cat "$OUT/table.md"
