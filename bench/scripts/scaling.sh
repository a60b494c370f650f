#!/usr/bin/env bash
# Throughput as shards are added: W1 (hot channels) and W2 (personal + group channels)
# at 1, 2, 4, … shards, driven by several load generators at once, with Bun (one
# thread) and the floor as references on the same machine. Made for a many-core host
# (issue #14's "1 → 16 shards" goal); on a small box it runs, but the shards and the
# load generators share cores (the table says so).
#
#   bench/scripts/scaling.sh                          # shards "1 2 4 8", nproc/2 load generators
#   bench/scripts/scaling.sh --shards "1 2 4 8 16" --loadgens 8 --workloads w1
#
# Options: --shards "1 2 4 8"  --loadgens L (default nproc/2, at least 1)
#          --workloads "w1 w2"  --subscribers N (per load generator; W1 default 1000,
#          W2 default 5000)  --burst K (W1, default 16)  --duration-s S (default 3)
#          --bin-dir DIR (ringcast, loadgen and floor binaries; default target/release,
#          built first unless --no-build)  --bun PATH (default the peer's bun if
#          installed; "none" skips it)  --no-floor
#
# Layout: the server gets cores 0..S-1 (taskset; Ringcast pins shard i to core i), load
# generator k gets core nproc-1-k. Each load generator uses channels of its own
# (`--channel-prefix lgK-`) and all start measuring at the same wall-clock moment
# (`--start-at-ms`), so their rates add up. Bun and the floor run on core 0 alone.
# Results: bench/results/<stamp>-scaling/{results.jsonl,table.md,*.log}.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ORIG_ARGS="$*"
cd "$ROOT"

NCPU=$(nproc)
SHARDS_LIST="1 2 4 8"
LOADGENS=$((NCPU / 2))
[ "$LOADGENS" -lt 1 ] && LOADGENS=1
WORKLOADS="w1 w2"
SUBS=""
BURST=16
DURATION=3
BIN_DIR="$ROOT/target/release"
BUILD=1
BUN="$ROOT/bench/peers/bun/node_modules/.bin/bun"
FLOOR=1

while [ $# -gt 0 ]; do
  case "$1" in
    --shards) SHARDS_LIST=$2; shift ;;
    --loadgens) LOADGENS=$2; shift ;;
    --workloads) WORKLOADS=$2; shift ;;
    --subscribers) SUBS=$2; shift ;;
    --burst) BURST=$2; shift ;;
    --duration-s) DURATION=$2; shift ;;
    --bin-dir) BIN_DIR=$(realpath "$2"); BUILD=0; shift ;;
    --no-build) BUILD=0 ;;
    --bun) BUN=$2; shift ;;
    --no-floor) FLOOR=0 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$BUILD" = 1 ]; then
  cargo build --release -q -p ringcast-engine --bin ringcast -p ringcast-bench --bin loadgen --bin floor || exit 1
fi
for b in ringcast loadgen floor; do
  [ -x "$BIN_DIR/$b" ] || { echo "missing $BIN_DIR/$b" >&2; exit 1; }
done
[ "$BUN" != none ] && [ ! -x "$BUN" ] && { echo "no bun at $BUN: Bun rows skipped"; BUN=none; }

STAMP=$(date +%Y%m%d-%H%M%S)
OUT="$ROOT/bench/results/$STAMP-scaling"
mkdir -p "$OUT"
JSONL="$OUT/results.jsonl"
: > "$JSONL"

SRV_PID=""
DATA_DIR=""
# shellcheck source=lib/server.sh
. "$ROOT/bench/scripts/lib/server.sh"
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# start_pinned_server NAME SHARDS LOG: sets SRV_PID and SRV_URL SRV_PROTO, or returns 1.
start_pinned_server() {
  local name=$1 shards=$2 log=$3 path="/_rt/ws"
  SRV_PROTO=ringcast
  case "$name" in
    ringcast)
      DATA_DIR=$(mktemp -d)
      taskset -c "0-$((shards - 1))" "$BIN_DIR/ringcast" serve --dev --listen 127.0.0.1:0 \
        --shards "$shards" --data-dir "$DATA_DIR" > "$log" 2>&1 &
      ;;
    floor)
      path="/"; SRV_PROTO=floor
      taskset -c 0 "$BIN_DIR/floor" --listen 127.0.0.1:0 > "$log" 2>&1 &
      ;;
    bun)
      taskset -c 0 "$BUN" "$ROOT/bench/peers/bun/server.mjs" 0 > "$log" 2>&1 &
      ;;
  esac
  SRV_PID=$!
  local port
  port=$(listen_port "$log")
  if [ -z "$port" ]; then
    echo "$name did not start: $(tail -c 300 "$log")" >&2
    stop_server
    return 1
  fi
  SRV_URL="ws://127.0.0.1:$port$path"
}

# run_case NAME SHARDS WORKLOAD: L load generators at once, one JSON line each.
run_case() {
  local name=$1 shards=$2 wl=$3 n=$SUBS
  [ -z "$n" ] && { [ "$wl" = w1 ] && n=1000 || n=5000; }
  local log="$OUT/$name-s$shards-$wl.log"
  printf '%-9s shards=%-3s %s  %s load generators × %s connections ... ' "$name" "$shards" "$wl" "$LOADGENS" "$n"
  start_pinned_server "$name" "$shards" "$log" || { echo FAILED; return; }
  # Set-up time: about 2 s per 10k connections of every load generator, at least 3 s.
  local setup_ms=$((3000 + LOADGENS * n / 5))
  local start_at=$(( $(date +%s%3N) + setup_ms ))
  local pids=() k
  for k in $(seq 0 $((LOADGENS - 1))); do
    local core=$(( ((NCPU - 1 - k) % NCPU + NCPU) % NCPU ))
    timeout 300 taskset -c "$core" "$BIN_DIR/loadgen" --url "$SRV_URL" --protocol "$SRV_PROTO" \
      --label "$name" --workload "$wl" --subscribers "$n" --payload 64 --burst "$([ "$wl" = w1 ] && echo "$BURST" || echo 1)" \
      --duration-s "$DURATION" --warmup-s 1 --server-pid "$SRV_PID" --json \
      --channel-prefix "lg$k-" --start-at-ms "$start_at" \
      > "$OUT/$name-s$shards-$wl-lg$k.json" 2>> "$log" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  stop_server
  python3 - "$name" "$shards" "$wl" "$LOADGENS" "$NCPU" "$OUT/$name-s$shards-$wl-lg"*.json >> "$JSONL" <<'EOF'
import json, sys
name, shards, wl, lgs, ncpu = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
rows = []
for path in sys.argv[6:]:
    try:
        rows.append(json.loads(open(path).read().strip().splitlines()[-1]))
    except Exception as e:
        rows.append({"error": f"{path}: {e}"})
key = "deliveries_per_s" if wl == "w1" else "max_msgs_per_s"
errors = [r.get("error") for r in rows if "error" in r or key not in r]
print(json.dumps({
    "server": name, "shards": shards, "workload": wl, "loadgens": lgs,
    "rate": sum(r.get(key, 0) for r in rows),
    "metric": key,
    "start_late_ms": max((r.get("start_late_ms", 0) for r in rows), default=0),
    "shared_cores": (shards if name == "ringcast" else 1) + lgs > ncpu,
    "errors": [str(e) for e in errors if e],
}))
EOF
  tail -1 "$JSONL" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("error: %s" % d["errors"] if d["errors"] else "%.1fk" % (d["rate"] / 1e3))'
}

for wl in $WORKLOADS; do
  [ "$BUN" != none ] && run_case bun 1 "$wl"
  [ "$FLOOR" = 1 ] && run_case floor 1 "$wl"
  for s in $SHARDS_LIST; do run_case ringcast "$s" "$wl"; done
done

python3 - "$JSONL" "$OUT/table.md" "$ORIG_ARGS" "$NCPU" <<'EOF'
import json, sys, platform
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = [f"Scaling run on {platform.node()} ({sys.argv[4]} CPUs), command: `bench/scripts/scaling.sh {sys.argv[3]}`", ""]
for wl in sorted({r["workload"] for r in rows}):
    rs = [r for r in rows if r["workload"] == wl]
    metric = "deliveries/s" if wl == "w1" else "max msgs/s"
    one = next((r["rate"] for r in rs if r["server"] == "ringcast" and r["shards"] == 1 and r["rate"]), None)
    bun = next((r["rate"] for r in rs if r["server"] == "bun" and r["rate"]), None)
    out += [f"### {wl.upper()} ({metric}, summed over the load generators)", "",
            "| server | shards | load generators | " + metric + " | × 1 shard | ÷ Bun | cores shared | start late ms | errors |",
            "|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in rs:
        x1 = f"{r['rate'] / one:.2f}" if one and r["server"] == "ringcast" else ""
        xb = f"{r['rate'] / bun:.2f}" if bun else ""
        out.append(f"| {r['server']} | {r['shards']} | {r['loadgens']} | {r['rate'] / 1e3:.1f}k | {x1} | {xb} | "
                   f"{'yes' if r['shared_cores'] else 'no'} | {r['start_late_ms']} | {'; '.join(r['errors'])} |")
    out.append("")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("\n".join(out))
print(f"results in {sys.argv[2]}")
EOF
