#!/usr/bin/env bash
# Installs what the end-to-end tests need beyond cargo:
# - Debian packages: chromium (tests/tests/browser.rs drives the demo page in it), nginx,
#   haproxy and caddy (tests/tests/tls_proxies.rs starts each in front of ringcast), openssl
#   (the test certificates), fonts-liberation (text in Chromium). Installed with apt-get when a command is missing (root, or
#   sudo); the tests start them as their own processes, never as system services.
# - Node packages, each pinned by its package-lock.json: tests/sdk (the official SDK, `ws`
#   and `eventsource`: Node 20 has neither a global WebSocket nor EventSource),
#   tests/browser (playwright-core, which drives /usr/bin/chromium and downloads no
#   browser), demo (esbuild and the SDK, for the demo page's bundle).
# - demo/dist/platform.js, the demo page's browser bundle (scripts/build-demo.sh).
# Idempotent: quick when everything is already there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "install-test-deps: node and npm are required (Node 20 or newer)" >&2
  exit 1
fi

# ── Debian packages ──────────────────────────────────────────────────────────────────
missing=()
for pair in chromium:chromium nginx:nginx haproxy:haproxy caddy:caddy openssl:openssl; do
  cmd="${pair%%:*}" pkg="${pair#*:}"
  # nginx and haproxy live in /usr/sbin, which a non-root PATH may lack.
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
    missing+=("$pkg")
  fi
done
# Without a font, Chromium draws every letter as a box (the screenshots show it).
if ! dpkg-query -W -f='${Status}' fonts-liberation 2>/dev/null | grep -q "ok installed"; then
  missing+=(fonts-liberation)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "install-test-deps: need root (or sudo) to apt-get install ${missing[*]}" >&2
      exit 1
    fi
    sudo=(sudo)
  fi
  echo "install-test-deps: apt-get install ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  # nginx's and haproxy's packages start a system service on install; the tests start
  # their own processes instead. A policy-rc.d that says no (Debian's switch for this,
  # obeyed by invoke-rc.d and deb-systemd-invoke) stops that, for this install only.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    trap '"${sudo[@]}" rm -f "$policy"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
else
  echo "install-test-deps: chromium, nginx, haproxy, caddy and openssl are installed"
fi

# ── Node packages ────────────────────────────────────────────────────────────────────
# npm records the lock file it installed from in node_modules/.package-lock.json; when
# that is newer than package-lock.json and the packages are there, nothing is to do.
npm_ci() {
  local dir="$1"
  shift
  local up_to_date=1
  if [ ! -f "$dir/node_modules/.package-lock.json" ] \
    || [ ! "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
    up_to_date=0
  fi
  for pkg in "$@"; do
    [ -d "$dir/node_modules/$pkg" ] || up_to_date=0
  done
  local name="${dir#"$root"/}"
  if [ "$up_to_date" -eq 1 ]; then
    echo "install-test-deps: $name/node_modules is up to date"
  else
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "install-test-deps: installed $name/node_modules"
  fi
}

npm_ci "$root/tests/sdk" @maravilla-labs/platform ws eventsource
npm_ci "$root/tests/browser" playwright-core
npm_ci "$root/demo" @maravilla-labs/platform esbuild

# ── the demo page's bundle ───────────────────────────────────────────────────────────
bash "$root/scripts/build-demo.sh"
