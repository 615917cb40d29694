#!/usr/bin/env bash
# Benchmark, not a test: write-behind on a mirror with a slow write-mostly
# member. Two raid1 arrays in one daemon, each of a fast malloc member and a
# write-mostly member behind SPDK's `delay` wrapper (BENCH_DELAY_US, default
# 2000 µs per read and write):
#
#   wb_on   write_behind BENCH_WB (default 256)
#   wb_off  write_behind 0 (every write waits for the slow copy)
#
# 4 KiB random writes (fio's nbd engine, iodepth 32) on each, alternating
# in rounds (on,off then off,on, ...: BENCH_ROUNDS rounds), IOPS and
# completion latency p50/p99 per job; then 4 KiB random reads on both, with
# the members' read counters (bdev_mdraid_get_bdevs base_bdevs_list[].io)
# before and after: the write-mostly member must serve none of them.
#
#   bash scripts/bench/write-behind.sh     (results in target/bench/write-behind-*.txt)
# Environment: BENCH_SECS (default 5 per job), BENCH_ROUNDS (default 4),
# BENCH_DELAY_US, BENCH_WB, BENCH_SIZE_MB (per member, default 256),
# BENCH_MDRAID_ARGS (reactor options for mdraid serve, default "-m 0x1").
set -euo pipefail
cd "$(dirname "$0")/../.."

secs=${BENCH_SECS:-5}
rounds=${BENCH_ROUNDS:-4}
delay=${BENCH_DELAY_US:-2000}
wb=${BENCH_WB:-256}
size_mb=${BENCH_SIZE_MB:-256}
. scripts/bench/common.sh

blocks=$((size_mb * 1024 * 1024 / 4096))
cfg=()
for a in on off; do
  cfg+=("{\"method\":\"bdev_malloc_create\",\"params\":{\"name\":\"fast_$a\",\"num_blocks\":$blocks,\"block_size\":4096}}")
  cfg+=("{\"method\":\"bdev_malloc_create\",\"params\":{\"name\":\"base_$a\",\"num_blocks\":$blocks,\"block_size\":4096}}")
  cfg+=("{\"method\":\"bdev_delay_create\",\"params\":{\"base_bdev_name\":\"base_$a\",\"name\":\"slow_$a\",\"avg_read_latency\":$delay,\"p99_read_latency\":$delay,\"avg_write_latency\":$delay,\"p99_write_latency\":$delay}}")
done
cfg+=("{\"method\":\"bdev_mdraid_create\",\"params\":{\"name\":\"wb_on\",\"raid_level\":\"raid1\",\"assume_clean\":true,\"base_bdevs\":[\"fast_on\",\"slow_on\"],\"write_mostly\":[\"slow_on\"],\"write_behind\":$wb}}")
cfg+=("{\"method\":\"bdev_mdraid_create\",\"params\":{\"name\":\"wb_off\",\"raid_level\":\"raid1\",\"assume_clean\":true,\"base_bdevs\":[\"fast_off\",\"slow_off\"],\"write_mostly\":[\"slow_off\"]}}")
cfg+=("{\"method\":\"mdraid_nbd_listener_add\",\"params\":{\"unix_path\":\"$tmp/nbd.sock\"}}")
for a in wb_on wb_off; do cfg+=("{\"method\":\"mdraid_nbd_export_add\",\"params\":{\"bdev_name\":\"$a\"}}"); done
(IFS=,; echo "{\"subsystems\":[{\"subsystem\":\"bdev\",\"config\":[${cfg[*]}]}]}") >"$tmp/cfg.json"

start_daemon "$tmp/cfg.json"

# One fio job; prints "IOPS p50_us p99_us".
run_fio() { # array rw seconds
  fio --name=b --ioengine=nbd --uri="nbd+unix:///$1?socket=$tmp/nbd.sock" --rw="$2" \
    --bs=4k --iodepth=32 --size="$((size_mb / 2))M" --time_based --runtime="$3" \
    --output-format=json --output="$tmp/fio.json" >/dev/null 2>&1 || { echo "fio failed" >&2; echo "- - -"; return; }
  python3 - "$tmp/fio.json" "$2" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read" if sys.argv[2] == "randread" else "write"]
p = d["clat_ns"].get("percentile", {})
print("%.0f %.0f %.0f" % (d["iops"], p.get("50.000000", 0) / 1e3, p.get("99.000000", 0) / 1e3))
PY
}

# "reads_fast reads_slow writes_fast writes_slow" of an array.
counters() {
  rpc bdev_mdraid_get_bdevs "{\"name\":\"$1\"}" | python3 -c '
import json, sys
m = json.load(sys.stdin)[0]["base_bdevs_list"]
print(m[0]["io"]["reads"], m[1]["io"]["reads"], m[0]["io"]["writes"], m[1]["io"]["writes"])'
}

report=$out/write-behind-$(date -u +%Y%m%dT%H%M%SZ).txt
{
echo "# $(date -u) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# fio $(fio --version), 4 KiB, iodepth 32, ${secs}s per job; raid1 of malloc ${size_mb} MiB + delay(${delay} us) write-mostly; mdraid serve ${BENCH_MDRAID_ARGS:--m 0x1}"
printf '%-7s %-10s %5s %10s %8s %8s\n' array rw round IOPS p50_us p99_us
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then arrays="wb_on wb_off"; else arrays="wb_off wb_on"; fi
  for a in $arrays; do
    read -r iops p50 p99 < <(run_fio "$a" randwrite "$secs")
    printf '%-7s %-10s %5s %10s %8s %8s\n' "$a" randwrite "$r" "$iops" "$p50" "$p99"
  done
done
for a in wb_on wb_off; do
  # Let the write-behind writes drain, then read.
  sleep 1
  read -r rf0 rs0 wf0 ws0 < <(counters "$a")
  read -r iops p50 p99 < <(run_fio "$a" randread "$secs")
  read -r rf1 rs1 wf1 ws1 < <(counters "$a")
  printf '%-7s %-10s %5s %10s %8s %8s   member reads during the job: fast %d, write-mostly %d; writes so far fast %d, write-mostly %d\n' \
    "$a" randread 1 "$iops" "$p50" "$p99" $((rf1 - rf0)) $((rs1 - rs0)) "$wf1" "$ws1"
done
} | tee "$report.raw"
python3 - "$report.raw" <<'PY' | tee -a "$report.raw"
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1]) if l.startswith("wb_") and l.split()[1] == "randwrite" and l.split()[3] != "-"]
on = [r for r in rows if r[0] == "wb_on"]; off = [r for r in rows if r[0] == "wb_off"]
if on and off:
    m = lambda rs, i: st.median(float(r[i]) for r in rs)
    print("# randwrite medians over %d rounds: write-behind on %.0f IOPS p50 %.0f us p99 %.0f us; off %.0f IOPS p50 %.0f us p99 %.0f us; on/off IOPS %.2f, p50 %.3f, p99 %.3f"
          % (len(on), m(on, 3), m(on, 4), m(on, 5), m(off, 3), m(off, 4), m(off, 5), m(on, 3) / m(off, 3), m(on, 4) / m(off, 4), m(on, 5) / m(off, 5)))
PY
mv "$report.raw" "$report"
echo "written: $report"
