#!/usr/bin/env bash
# Run a stock SPDK app with the mdraid module loaded (the cdylib, through
# LD_PRELOAD). SPDK_DIR is an SPDK tree built with shared libraries.
#
#   SPDK_DIR=~/spdk scripts/spdk-preload.sh spdk_tgt -r /var/tmp/spdk.sock
#   SPDK_DIR=~/spdk scripts/spdk-preload.sh bdevperf --json cfg.json -q 32 -o 4096 -w verify -t 10
#
# APP is looked up in $SPDK_DIR/build/bin and build/examples. Without
# hugepages or PCI devices, add `--no-huge -s 2048 --no-pci`.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SPDK_DIR:?set SPDK_DIR to an SPDK tree built with shared libraries}"
app="${1:?usage: $0 APP [ARGS...]}"
shift
for d in bin examples; do
  if [ -x "$SPDK_DIR/build/$d/$app" ]; then exe="$SPDK_DIR/build/$d/$app"; fi
done
: "${exe:?no $app in $SPDK_DIR/build/bin or build/examples}"
bash scripts/install-spdk-deps.sh
cargo build --release -p mdraid-spdk >&2
so="$(realpath "${CARGO_TARGET_DIR:-target}/release/libmdraid_spdk.so")"
export LD_LIBRARY_PATH="$SPDK_DIR/build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec env LD_PRELOAD="$so" "$exe" "$@"
