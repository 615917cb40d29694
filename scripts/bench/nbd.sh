#!/usr/bin/env bash
# Benchmark, not a test: mdraid's embedded daemon over NBD against peers,
# side by side in one run, with fio's nbd engine (4 KiB random read and
# random write, queue depth 32).
#
#   memory-backed: mdraid raid1 of two malloc members
#                  vs qemu-nbd serving a file on tmpfs
#                  vs nbdkit's memory plugin
#   file-backed:   mdraid raid0 of two files
#                  vs qemu-nbd --cache=none --aio=native serving one file
#                  on the same filesystem
#
#   bash scripts/bench/nbd.sh            (results in target/bench/nbd-*.txt)
# Environment: BENCH_SECS (default 10 per job), BENCH_SIZE_MB (default 512),
# BENCH_DIR (file-backed members, default target/bench/files),
# BENCH_MDRAID_ARGS (reactor options for mdraid serve, default "-m 0x1":
# one polling reactor, leaving the other core to fio on a 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/../.."

secs=${BENCH_SECS:-10}
size_mb=${BENCH_SIZE_MB:-512}
out=target/bench
files=${BENCH_DIR:-$out/files}
mkdir -p "$out" "$files"
need=()
command -v fio >/dev/null || need+=(fio)
command -v qemu-nbd >/dev/null || need+=(qemu-utils)
command -v nbdkit >/dev/null || need+=(nbdkit)
source scripts/apt.sh
apt_install bench "${need[@]}"
cargo build --release -q -p mdraid
bin=${CARGO_TARGET_DIR:-target}/release/mdraid
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# One fio job; prints "IOPS p50_us p99_us".
run_fio() { # uri rw
  fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs=4k --iodepth=32 \
    --size="${size_mb}M" --time_based --runtime="$secs" \
    --output-format=json --output="$tmp/fio.json" >/dev/null 2>&1 || { echo "fio failed" >&2; echo "- - -"; return; }
  python3 - "$tmp/fio.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] else j["write"]
p = d["clat_ns"].get("percentile", {})
print("%.0f %.0f %.0f" % (d["iops"], p.get("50.000000", 0) / 1e3, p.get("99.000000", 0) / 1e3))
PY
}

wait_sock() { for _ in $(seq 1 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; return 1; }

# The daemon with a config (memory or files).
start_mdraid() { # config-json sock
  "$bin" serve --json "$1" -r "$tmp/rpc.sock" ${BENCH_MDRAID_ARGS:--m 0x1} >"$tmp/mdraid.log" 2>&1 &
  mdraid_pid=$!
  pids+=($mdraid_pid)
  wait_sock "$2"
  for _ in $(seq 1 200); do "$bin" rpc -s "$tmp/rpc.sock" framework_wait_init >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "mdraid did not start: $(cat "$tmp/mdraid.log")" >&2; return 1
}
stop_mdraid() { kill -TERM "$mdraid_pid" 2>/dev/null || true; wait "$mdraid_pid" 2>/dev/null || true; }

blocks=$((size_mb * 1024 * 1024 / 4096))
report=$out/nbd-$(date -u +%Y%m%dT%H%M%SZ).txt
{
echo "# $(date -u) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# fio $(fio --version), 4 KiB, iodepth 32, ${secs}s per job, ${size_mb} MiB"
printf '%-36s %10s %10s %8s %8s\n' target rw IOPS p50_us p99_us

# --- memory-backed ---------------------------------------------------------
cat >"$tmp/mem.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_malloc_create","params":{"name":"m0","num_blocks":$blocks,"block_size":4096}},
 {"method":"bdev_malloc_create","params":{"name":"m1","num_blocks":$blocks,"block_size":4096}},
 {"method":"bdev_mdraid_create","params":{"name":"md1","raid_level":"raid1","assume_clean":true,"base_bdevs":["m0","m1"]}},
 {"method":"mdraid_nbd_listener_add","params":{"unix_path":"$tmp/mdraid.sock"}},
 {"method":"mdraid_nbd_export_add","params":{"bdev_name":"md1"}}]}]}
JSON
# Each target runs alone: a polling daemon left running would take the
# cores from the next one.
start_mdraid "$tmp/mem.json" "$tmp/mdraid.sock"
for rw in randread randwrite; do
  printf '%-36s %10s %10s %8s %8s\n' "mdraid raid1 (2x malloc)" "$rw" $(run_fio "nbd+unix:///md1?socket=$tmp/mdraid.sock" "$rw")
done
stop_mdraid
truncate -s "${size_mb}M" /dev/shm/mdraid-bench.img
qemu-nbd -t -f raw -x q -k "$tmp/qemu.sock" --cache=writeback --shared=8 /dev/shm/mdraid-bench.img &
qpid=$!
wait_sock "$tmp/qemu.sock"
for rw in randread randwrite; do
  printf '%-36s %10s %10s %8s %8s\n' "qemu-nbd (file on tmpfs)" "$rw" $(run_fio "nbd+unix:///q?socket=$tmp/qemu.sock" "$rw")
done
kill "$qpid"; wait "$qpid" 2>/dev/null || true
rm -f /dev/shm/mdraid-bench.img
nbdkit -f -U "$tmp/nbdkit.sock" memory "${size_mb}M" &
kpid=$!
wait_sock "$tmp/nbdkit.sock"
for rw in randread randwrite; do
  printf '%-36s %10s %10s %8s %8s\n' "nbdkit memory" "$rw" $(run_fio "nbd+unix:///?socket=$tmp/nbdkit.sock" "$rw")
done
kill "$kpid"; wait "$kpid" 2>/dev/null || true

# --- file-backed -------------------------------------------------------------
for f in f0 f1 peer; do truncate -s "${size_mb}M" "$files/$f.img"; done
cat >"$tmp/files.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_aio_create","params":{"name":"f0","filename":"$(realpath "$files/f0.img")"}},
 {"method":"bdev_aio_create","params":{"name":"f1","filename":"$(realpath "$files/f1.img")"}},
 {"method":"bdev_mdraid_create","params":{"name":"md0","raid_level":"raid0","assume_clean":true,"base_bdevs":["f0","f1"],"strip_size_kb":64}},
 {"method":"mdraid_nbd_listener_add","params":{"unix_path":"$tmp/mdraid2.sock"}},
 {"method":"mdraid_nbd_export_add","params":{"bdev_name":"md0"}}]}]}
JSON
start_mdraid "$tmp/files.json" "$tmp/mdraid2.sock"
for rw in randread randwrite; do
  printf '%-36s %10s %10s %8s %8s\n' "mdraid raid0 (2 files)" "$rw" $(run_fio "nbd+unix:///md0?socket=$tmp/mdraid2.sock" "$rw")
done
stop_mdraid
qemu-nbd -t -f raw -x p -k "$tmp/qemu2.sock" --cache=none --aio=native --shared=8 "$files/peer.img" &
qpid=$!
wait_sock "$tmp/qemu2.sock"
for rw in randread randwrite; do
  printf '%-36s %10s %10s %8s %8s\n' "qemu-nbd cache=none aio=native" "$rw" $(run_fio "nbd+unix:///p?socket=$tmp/qemu2.sock" "$rw")
done
kill "$qpid"; wait "$qpid" 2>/dev/null || true
} | tee "$report"
echo "written: $report"
