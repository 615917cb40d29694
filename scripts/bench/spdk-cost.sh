#!/usr/bin/env bash
# Benchmark, not a test: what one I/O costs in instructions, the `mdraid`
# module against SPDK's `raid`, counted by cachegrind (valgrind) on the
# jobs of spdk.sh (same arrays, same bdevperf options). Instruction counts
# do not depend on the machine's noise the way IOPS do, so this shows small
# changes to the data path that a timed run cannot.
#
# Per job and side (A = SPDK's raid bdev, B = mdraid's), per I/O:
#   module Ir    instructions in the RAID module's own functions (SPDK:
#                module/bdev/raid; mdraid: the cdylib's, which also counts
#                the pollers of its idle arrays, ~20 per I/O)
#   module D1m   its simulated L1 data-cache misses (these vary from run to
#                run with the polling pattern; the Ir do not)
#   bdev Ir      instructions in SPDK's bdev layer (lib/bdev) for the I/O
#                and its member I/Os (the two modules call it differently)
#
#   SPDK_DIR=/path/to/spdk bash scripts/bench/spdk-cost.sh   (target/bench/spdk-cost-*.txt)
# Environment: BENCH_SECS (default 2 per job; cachegrind runs ~50x slower),
# BENCH_JOBS, BENCH_QD, BENCH_HUGE as in spdk.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
BENCH_SECS=${BENCH_SECS:-2}
source scripts/bench/spdk-common.sh
need=()
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v patchelf >/dev/null 2>&1 || need+=(patchelf)
source scripts/apt.sh
apt_install bench "${need[@]}"
# valgrind does not pass LD_PRELOAD on to the program it runs: a copy of
# bdevperf that needs the module instead.
cp "$SPDK_DIR/build/examples/bdevperf" "$tmp/bdevperf"
patchelf --add-needed "$so" "$tmp/bdevperf"

# cost BDEV WORKLOAD IO_SIZE GROUP: "module_Ir module_D1m bdev_Ir" per I/O
cost() {
  local cg="$tmp/cg.out" log="$tmp/cg.log"
  timeout -k 5 $((secs * 100 + 120)) valgrind --tool=cachegrind --cache-sim=yes \
    --cachegrind-out-file="$cg" "$tmp/bdevperf" $mem --no-pci --disable-cpumask-locks \
    -m "${BENCH_CORE:-0x1}" --json "$tmp/cfg.json" -q "$qd" -o "$3" -w "$2" -t "$secs" -T "$1" \
    >"$log" 2>&1 || { echo "bdevperf under cachegrind failed on $1 $2:" >&2; tail -5 "$log" >&2; echo "- - -"; return; }
  cg_annotate --threshold=0 --auto=no "$cg" | python3 -c '
import re, sys
bdev, group, log = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().replace("\r", "")
# bdevperf: "<bdev> : <runtime s> <IOPS> ..." on the job line of the summary
ios = [float(m[0]) * float(m[1]) for m in re.findall(r"^\s*" + re.escape(bdev) + r"\s*:\s*([\d.]+)\s+([\d.]+)", log, re.M)]
if not ios or ios[-1] <= 0:
    print("- - -"); sys.exit()
ios = ios[-1]
pat = {"spdk": r"/module/bdev/raid/", "mdraid": r"mdraid|bdev_raid::"}[group]
sums = {"mod": [0] * 9, "bdev": [0] * 9}
for line in sys.stdin:
    # Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw file:function, each count
    # maybe followed by "(nn.n%)"
    toks = re.sub(r"\(\s*[\d.]+%\)", "", line).split()
    if len(toks) < 10 or not all(re.fullmatch(r"[\d,]+|\.", t) for t in toks[:9]):
        continue
    vals = [int(t.replace(",", "")) if t != "." else 0 for t in toks[:9]]
    name = " ".join(toks[9:])
    if "PROGRAM TOTALS" in name:
        continue
    if re.search(pat, name):
        k = "mod"
    elif "/lib/bdev/" in name:
        k = "bdev"
    else:
        continue
    sums[k] = [a + b for a, b in zip(sums[k], vals)]
m, b = sums["mod"], sums["bdev"]
print("%.0f %.2f %.0f" % (m[0] / ios, (m[4] + m[7]) / ios, b[0] / ios))
' "$1" "$4" "$log"
}

report=$out/spdk-cost-$(date -u +%Y%m%dT%H%M%SZ).txt
{
echo "# $(date -u) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(valgrind --version)"
echo "# bdevperf (SPDK $(cd "$SPDK_DIR" && git describe --tags 2>/dev/null || echo '?')) under cachegrind, qd $qd, ${secs}s per job, malloc members ${mb} MiB 4 KiB blocks, $mem"
echo "# per I/O; A = SPDK raid, B = mdraid (bitmap-* rows: A = mdraid bitmap off, B = on)"
printf '%-30s %-5s %10s %11s %8s %10s\n' job side module_Ir module_D1m bdev_Ir sum_Ir
for j in "${jobs[@]}"; do
  read -r name a b w sz <<<"$j"
  if [ -n "${BENCH_JOBS:-}" ] && [[ " $BENCH_JOBS " != *" $name "* ]]; then continue; fi
  for side in A B; do
    if [ "$side" = A ]; then dev=$a; else dev=$b; fi
    case $dev in spdk_*) group=spdk ;; *) group=mdraid ;; esac
    read -r ir d1 bir < <(cost "$dev" "$w" "$sz" "$group")
    sum=-; [ "$ir" != - ] && sum=$((ir + bir))
    printf '%-30s %-5s %10s %11s %8s %10s\n' "$name" "$side" "$ir" "$d1" "$bir" "$sum"
  done
done
} | tee "$report"
echo "written: $report"
