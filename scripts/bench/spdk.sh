#!/usr/bin/env bash
# Benchmark, not a test: the `mdraid` module against SPDK's own `raid`
# module in the same bdevperf process (one core, malloc members, queue
# depth 64, 4 KiB unless said):
#
#   raid1 of 2      randread, randwrite        mdraid vs SPDK raid1
#   raid0 of 4      randread, randwrite        mdraid vs SPDK raid0
#   raid5 of 4      full-stripe seq. write,    mdraid vs SPDK raid5f
#                   4 KiB randread
#
# Like for like: both modules keep a superblock on the members (SPDK's
# raid with `superblock: true`, mdraid's md v1.2 one), so on both the data
# starts 1 MiB into each member; mdraid with the bitmap off, and
# raid1/raid5 again with the bitmap on (its cost). Each job runs alone (bdevperf -T), in rounds
# alternating SPDK/mdraid (ABBA); the summary gives medians and ratios.
#
#   SPDK_DIR=/path/to/spdk bash scripts/bench/spdk.sh   (results in target/bench/spdk-*.txt)
# Environment: BENCH_SECS (default 4 per job), BENCH_ROUNDS (default 3),
# BENCH_CORE (default 0x1), BENCH_QD (default 64), BENCH_JOBS (a filter:
# names of jobs to run, default all), BENCH_HUGE=1 (hugepages instead of
# --no-huge; see below).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/spdk-common.sh

# One bdevperf job on one bdev; prints "IOPS MiB/s avg_lat_us".
job() { # bdev workload io_size
  local o
  o=$(timeout -k 5 $((secs + 60)) env LD_PRELOAD="$so" "$SPDK_DIR/build/examples/bdevperf" \
      $mem --no-pci --disable-cpumask-locks -m "${BENCH_CORE:-0x1}" --json "$tmp/cfg.json" \
      -q "$qd" -o "$3" -w "$2" -t "$secs" -T "$1" 2>&1) || { echo "bdevperf failed on $1 $2:" >&2; echo "$o" | tail -5 >&2; echo "- - -"; return; }
  [ -n "${BENCH_DEBUG:-}" ] && echo "$o" >&2
  echo "$o" | tr -d '\r' | awk '/^ *Total/ {print $3, $4, $7; found=1} END {if (!found) print "- - -"}'
}

report=$out/spdk-$(date -u +%Y%m%dT%H%M%SZ).txt
{
echo "# $(date -u) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# bdevperf (SPDK $(cd "$SPDK_DIR" && git describe --tags 2>/dev/null || echo '?')), core mask ${BENCH_CORE:-0x1}, qd $qd, ${secs}s per job, malloc members ${mb} MiB 4 KiB blocks, $mem"
echo "# bitmap-* rows: A = mdraid bitmap off, B = mdraid bitmap on (64 MiB chunk default)"
printf '%-28s %-6s %5s %12s %10s %10s\n' job side round IOPS MiB/s lat_us
for j in "${jobs[@]}"; do
  read -r name a b w sz <<<"$j"
  if [ -n "${BENCH_JOBS:-}" ] && [[ " $BENCH_JOBS " != *" $name "* ]]; then continue; fi
  for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then order="A B"; else order="B A"; fi
    for side in $order; do
      if [ "$side" = A ]; then dev=$a; else dev=$b; fi
      read -r iops mibs lat < <(job "$dev" "$w" "$sz")
      printf '%-28s %-6s %5s %12s %10s %10s\n' "$name" "$side" "$r" "$iops" "$mibs" "$lat"
    done
  done
done
} | tee "$report.raw"
python3 - "$report.raw" <<'PY' | tee -a "$report.raw"
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1]) if l[:1] != "#" and not l.startswith("job") and l.split()[3] != "-"]
for name in dict.fromkeys(r[0] for r in rows):
    a = [float(r[3]) for r in rows if r[0] == name and r[1] == "A"]
    b = [float(r[3]) for r in rows if r[0] == name and r[1] == "B"]
    if a and b:
        label = "bitmap on/off" if name.startswith("bitmap") else "mdraid/SPDK"
        print("# %-28s A %12.0f IOPS  B %12.0f IOPS (medians of %d)  %s %.3f"
              % (name, st.median(a), st.median(b), min(len(a), len(b)), label, st.median(b) / st.median(a)))
PY
mv "$report.raw" "$report"
echo "written: $report"
