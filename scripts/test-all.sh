#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests need
# (Debian packages: chromium, nginx, haproxy, caddy, openssl; Node packages for the SDK,
# browser and demo; the demo's SDK bundle), builds the `ringcast` binary the end-to-end
# tests start, then runs all unit, property and end-to-end tests, and the WebSocket
# and REN end-to-end tests once more with the send ring off (`RINGCAST_SEND_RING=0`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
cargo build -p ringcast-engine --bin ringcast
cargo test --workspace -- --test-threads=2
# The writer-task path (the legacy driver's, and every connection's where the kernel
# refuses a send ring) once more end to end: WebSocket traffic, slow consumers (also the
# slow-consumer soak), closes, SSE streams.
RINGCAST_SEND_RING=0 cargo test -p ringcast-tests --test pubsub --test slow_consumer --test soak --test soak_ren \
  --test soak_limits --test soak_slow --test shutdown --test framing --test close_logs \
  --test ren -- --test-threads=2
