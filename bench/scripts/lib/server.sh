# Sourced by compare.sh, scaling.sh, w2-profile.sh and w2-growth-ab.sh: starting (compare.sh,
# w2-profile.sh, w2-growth-ab.sh) and stopping the server under test and waiting for its port. Uses the
# globals SRV_PID (the server's pid) and DATA_DIR (a Ringcast data directory to remove,
# or empty); start_server also reads ROOT, REL (the folder of the built ringcast and floor
# binaries; default ROOT/target/release), PIN_SERVER (e.g. "taskset -c 0"), SHARDS,
# BASELINE (the binary for server "baseline"), BASELINE_ARGS (more `serve` flags for it,
# optional) and BROKEN (name -> why it cannot run).

# stop_server: SIGTERM, up to 5 s for it to go, then SIGKILL; removes DATA_DIR.
stop_server() {
  if [ -n "$SRV_PID" ] && kill -0 "$SRV_PID" 2> /dev/null; then
    kill "$SRV_PID" 2> /dev/null
    # Bounded: 50 × 0.1 s, then SIGKILL.
    for _ in $(seq 50); do kill -0 "$SRV_PID" 2> /dev/null || break; sleep 0.1; done
    kill -9 "$SRV_PID" 2> /dev/null
    wait "$SRV_PID" 2> /dev/null
  fi
  SRV_PID=""
  if [ -n "$DATA_DIR" ]; then rm -rf "$DATA_DIR"; DATA_DIR=""; fi
}

# listen_port LOG: prints the port the server logged "listening on 127.0.0.1:PORT" for
# (up to 10 s; nothing if it exited or never said so).
listen_port() {
  local log=$1 port=""
  # Bounded: 100 × 0.1 s.
  for _ in $(seq 100); do
    port=$(grep -oE 'listening on 127\.0\.0\.1:[0-9]+' "$log" 2> /dev/null | head -1 | grep -oE '[0-9]+$')
    [ -n "$port" ] && break
    kill -0 "$SRV_PID" 2> /dev/null || break
    sleep 0.1
  done
  echo "$port"
}

# start_server NAME LOG: sets SRV_PID SRV_URL SRV_PROTO, or SRV_ERR.
start_server() {
  local name=$1 log=$2
  SRV_ERR=""
  if [ -n "${BROKEN[$name]:-}" ]; then SRV_ERR=${BROKEN[$name]}; return 1; fi
  local path="/_rt/ws" proto=ringcast
  # Emptied here, and the server appends (O_APPEND), as compare.sh's load generator does
  # to the same log: a server writing at its own offset overwrote the load generator's
  # lines (found running W6 with --quick: its warning was gone under the shutdown lines).
  : > "$log"
  case "$name" in
    ringcast|baseline)
      local bin="${REL:-$ROOT/target/release}/ringcast"
      local -a extra=()
      if [ "$name" = baseline ]; then
        bin=$BASELINE
        # Word-split on purpose: e.g. "--config bench/configs/dev-history-1.toml".
        # shellcheck disable=SC2206
        extra=(${BASELINE_ARGS:-})
      fi
      DATA_DIR=$(mktemp -d)
      $PIN_SERVER "$bin" serve --dev --listen 127.0.0.1:0 \
        --shards "$SHARDS" --data-dir "$DATA_DIR" "${extra[@]}" >> "$log" 2>&1 &
      ;;
    floor)
      path="/"; proto=floor
      $PIN_SERVER "${REL:-$ROOT/target/release}/floor" --listen 127.0.0.1:0 >> "$log" 2>&1 &
      ;;
    node-ws)
      $PIN_SERVER node "$ROOT/bench/peers/node-ws/server.mjs" 0 >> "$log" 2>&1 &
      ;;
    socketio)
      path="/"; proto=socketio
      $PIN_SERVER node "$ROOT/bench/peers/socketio/server.mjs" 0 >> "$log" 2>&1 &
      ;;
    bun)
      $PIN_SERVER "$ROOT/bench/peers/bun/node_modules/.bin/bun" "$ROOT/bench/peers/bun/server.mjs" 0 >> "$log" 2>&1 &
      ;;
    *) SRV_ERR="unknown server"; return 1 ;;
  esac
  SRV_PID=$!
  local port
  port=$(listen_port "$log")
  if [ -z "$port" ]; then
    SRV_ERR="did not start: $(tail -c 200 "$log" | tr '\n"' ' \047')"
    stop_server
    return 1
  fi
  SRV_URL="ws://127.0.0.1:$port$path"
  SRV_PROTO=$proto
}
