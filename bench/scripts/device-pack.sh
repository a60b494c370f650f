#!/usr/bin/env bash
# Packs what bench/scripts/scaling.sh needs on a machine without network or Rust
# toolchain (the project's lent many-core device) into bench/device/ (git-ignored,
# about 47 MB): stripped release binaries of ringcast, loadgen and floor, and the Bun
# peer's binary xz-compressed (when it is installed here). On the device:
#
#   xz -dc bench/device/bun.xz > /tmp/bun && chmod +x /tmp/bun
#   bench/scripts/scaling.sh --bin-dir bench/device --bun /tmp/bun --shards "1 2 4 8 16" --loadgens 8
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
cargo build --release -q -p ringcast-engine --bin ringcast -p ringcast-bench --bin loadgen --bin floor
mkdir -p bench/device
for b in ringcast loadgen floor; do
  strip -o "bench/device/$b" "target/release/$b"
done
BUN_EXE=bench/peers/bun/node_modules/bun/bin/bun.exe
if [ -x "$BUN_EXE" ]; then
  xz -T0 -6 -c "$BUN_EXE" > bench/device/bun.xz
else
  echo "no Bun peer installed (bench/peers/bun): the device run will have no Bun rows"
fi
du -sh bench/device
