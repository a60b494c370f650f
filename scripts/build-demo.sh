#!/usr/bin/env bash
# Builds the demo page's copy of the official SDK for the browser:
# demo/dist/platform.js (gitignored), bundled by esbuild from demo/node_modules (pinned by
# demo/package-lock.json). `ringcast serve --dev` reads it once at start-up and serves it
# at /demo/platform.js. Idempotent: npm ci only when demo/node_modules does not match the
# lock file; the bundle itself takes well under a second.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
demo="$root/demo"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "build-demo: node and npm are required (Node 20 or newer)" >&2
  exit 1
fi

# npm records the lock file it installed from in node_modules/.package-lock.json.
if ! { [ -f "$demo/node_modules/.package-lock.json" ] \
  && [ "$demo/node_modules/.package-lock.json" -nt "$demo/package-lock.json" ] \
  && [ -d "$demo/node_modules/esbuild" ] \
  && [ -d "$demo/node_modules/@maravilla-labs/platform" ]; }; then
  (cd "$demo" && npm ci --no-audit --no-fund --loglevel=error)
fi

node "$demo/build.mjs"
