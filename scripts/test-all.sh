#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests need
# (Debian packages: chromium, nginx, haproxy, caddy, openssl; Node packages for the SDK,
# browser and demo; the demo's SDK bundle), builds the `ringcast` binary the end-to-end
# tests start, then runs all unit, property and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
cargo build -p ringcast-engine --bin ringcast
cargo test --workspace -- --test-threads=2
