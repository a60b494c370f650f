# Sourced by compare.sh and scaling.sh: stopping the server under test and waiting for
# its port. Uses the globals SRV_PID (the server's pid) and DATA_DIR (a Ringcast data
# directory to remove, or empty).

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
