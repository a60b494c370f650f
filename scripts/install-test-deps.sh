#!/usr/bin/env bash
# Installs what the end-to-end tests need beyond cargo: the official SDK, `ws` and
# `eventsource` (Node 20 has neither a global WebSocket nor EventSource) for
# tests/tests/sdk.rs (tests/sdk/node_modules, pinned by tests/sdk/package-lock.json).
# Idempotent: quick when node_modules already matches the lock file.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sdk="$root/tests/sdk"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "install-test-deps: node and npm are required (Node 20 or newer)" >&2
  exit 1
fi

# npm records the lock file it installed from in node_modules/.package-lock.json;
# when that matches package-lock.json there is nothing to do.
if [ -d "$sdk/node_modules" ] && [ -f "$sdk/node_modules/.package-lock.json" ] \
  && [ "$sdk/node_modules/.package-lock.json" -nt "$sdk/package-lock.json" ] \
  && [ -d "$sdk/node_modules/@maravilla-labs/platform" ] && [ -d "$sdk/node_modules/ws" ] \
  && [ -d "$sdk/node_modules/eventsource" ]; then
  echo "install-test-deps: tests/sdk/node_modules is up to date"
  exit 0
fi

cd "$sdk"
npm ci --no-audit --no-fund --loglevel=error
echo "install-test-deps: installed tests/sdk/node_modules"
