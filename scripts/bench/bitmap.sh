#!/usr/bin/env bash
# Benchmark, not a test: what the write-intent bitmap costs. 4 KiB random
# writes (fio's nbd engine, iodepth 32) through mdraid's NBD export over
#
#   raid1 of 2 malloc members   bitmap on  vs  bitmap off
#   raid5 of 4 malloc members   bitmap on  vs  bitmap off
#
# all four arrays in one daemon, measured in one run, alternating on and
# off in rounds (on,off then off,on, ...: BENCH_ROUNDS rounds per level).
# Before every measured job a warm-up of the same random writes over the
# same working set sets the working set's bits (the off array gets the same
# warm-up), so the measured jobs see the steady state the issue asks about:
# bits already set, kept set by the writes. The daemon's default
# daemon_sleep (5 s) applies. Each job also reports the CPU other processes
# took meanwhile (other%, in % of one core): on a small shared machine that,
# not the bitmap, is the main noise.
#
#   bash scripts/bench/bitmap.sh          (results in target/bench/bitmap-*.txt)
# Environment: BENCH_SECS (default 5 per measured job), BENCH_WARM_SECS
# (default 2), BENCH_ROUNDS (default 6), BENCH_QUIET (default 10: rounds
# whose jobs both had other% below it are summarised apart),
# BENCH_QUIET_WAIT (default 0: before each round, wait up to this many
# seconds for a second in which others took < BENCH_QUIET %), BENCH_SIZE_MB
# (per member, default 256), BENCH_WS_MB (working set per array, default
# 256), BENCH_CHUNK_KB (bitmap chunk; default: the daemon's, 64 MiB here),
# BENCH_MDRAID_ARGS (reactor options for mdraid serve, default "-m 0x1":
# one polling reactor, leaving the other core to fio on a 2-core machine),
# BENCH_CONTROL=1 (a control run: the "on" arrays get no bitmap either).
set -euo pipefail
cd "$(dirname "$0")/../.."

secs=${BENCH_SECS:-5}
warm=${BENCH_WARM_SECS:-2}
rounds=${BENCH_ROUNDS:-6}
size_mb=${BENCH_SIZE_MB:-256}
ws_mb=${BENCH_WS_MB:-256}
chunk_kb=${BENCH_CHUNK_KB:-}
. scripts/bench/common.sh

# CPU jiffies: "busy_all daemon" (busy = every CPU's non-idle time).
cpu_sample() {
  python3 - "$pid" <<'PY'
import sys
f = open("/proc/stat").readline().split()[1:]
busy = sum(map(int, f)) - int(f[3]) - int(f[4])
s = open("/proc/%s/stat" % sys.argv[1]).read().rsplit(")", 1)[1].split()
print(busy, int(s[11]) + int(s[12]))
PY
}

# Wait (at most BENCH_QUIET_WAIT seconds, default 0) until, over one
# second, other processes took less than BENCH_QUIET % of a core.
wait_quiet() {
  local t0=$SECONDS a b
  while [ $((SECONDS - t0)) -lt "${BENCH_QUIET_WAIT:-0}" ]; do
    a=$(cpu_sample); sleep 1; b=$(cpu_sample)
    python3 -c 'import sys; b0,d0,b1,d1,hz,q = map(float, sys.argv[1:]); sys.exit(0 if ((b1-b0)-(d1-d0))/hz*100 < q else 1)' \
      $a $b "$(getconf CLK_TCK)" "${BENCH_QUIET:-10}" && return 0
  done
  return 0 # not quiet in time: measure anyway (other% says how noisy)
}

# One fio job of 4 KiB random writes; prints "IOPS p50_us p99_us other%
# cpu_us": other% is the CPU time used during the job by neither the daemon
# nor fio, in % of one core (the noise from other work on the machine);
# cpu_us is the daemon's CPU time per write, in µs (with --interrupt the
# work per write; a polling reactor spins, so there it is ~1/IOPS).
run_fio() { # array seconds
  local before after
  before=$(cpu_sample)
  fio --name=b --ioengine=nbd --uri="nbd+unix:///$1?socket=$tmp/nbd.sock" --rw=randwrite \
    --bs=4k --iodepth=32 --size="${ws_mb}M" --time_based --runtime="$2" \
    --output-format=json --output="$tmp/fio.json" >/dev/null 2>&1 || { echo "fio failed" >&2; echo "- - - - -"; return; }
  after=$(cpu_sample)
  python3 - "$tmp/fio.json" "$before" "$after" "$(getconf CLK_TCK)" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["write"]
p = d["clat_ns"].get("percentile", {})
b0, d0 = map(int, sys.argv[2].split()); b1, d1 = map(int, sys.argv[3].split())
hz = int(sys.argv[4]); secs = j["elapsed"]
fio = (j["usr_cpu"] + j["sys_cpu"]) / 100 * secs * hz
other = max(0, (b1 - b0) - (d1 - d0) - fio) / (secs * hz) * 100
cpu_us = (d1 - d0) / hz * 1e6 / max(1, d["total_ios"])
print("%.0f %.0f %.0f %.0f %.2f" % (d["iops"], p.get("50.000000", 0) / 1e3, p.get("99.000000", 0) / 1e3, other, cpu_us))
PY
}

# "dirty/total" bits of an array, or "-" without a bitmap.
bits() {
  rpc bdev_mdraid_get_bdevs "{\"name\":\"$1\"}" | python3 -c '
import json, sys
b = json.load(sys.stdin)[0].get("bitmap")
print("%d/%d" % (b["dirty_chunks"], b["total_chunks"]) if b else "-")'
}

blocks=$((size_mb * 1024 * 1024 / 4096))
if [ -n "$chunk_kb" ]; then on="{\"chunk_kb\":$chunk_kb}"; else on=true; fi
# Control run: the "on" arrays get no bitmap either, so on/off shows how
# much the two arrays differ by themselves (placement, polling order).
if [ "${BENCH_CONTROL:-0}" = 1 ]; then on=false; fi
cfg=()
for i in 0 1 2 3; do cfg+=("{\"method\":\"bdev_malloc_create\",\"params\":{\"name\":\"a$i\",\"num_blocks\":$blocks,\"block_size\":4096}}"); done
for i in 0 1 2 3; do cfg+=("{\"method\":\"bdev_malloc_create\",\"params\":{\"name\":\"b$i\",\"num_blocks\":$blocks,\"block_size\":4096}}"); done
for i in 0 1 2 3; do cfg+=("{\"method\":\"bdev_malloc_create\",\"params\":{\"name\":\"c$i\",\"num_blocks\":$blocks,\"block_size\":4096}}"); done
cfg+=("{\"method\":\"bdev_mdraid_create\",\"params\":{\"name\":\"r1_on\",\"raid_level\":\"raid1\",\"assume_clean\":true,\"base_bdevs\":[\"a0\",\"a1\"],\"bitmap\":$on}}")
cfg+=("{\"method\":\"bdev_mdraid_create\",\"params\":{\"name\":\"r1_off\",\"raid_level\":\"raid1\",\"assume_clean\":true,\"base_bdevs\":[\"a2\",\"a3\"],\"bitmap\":false}}")
cfg+=("{\"method\":\"bdev_mdraid_create\",\"params\":{\"name\":\"r5_on\",\"raid_level\":\"raid5\",\"assume_clean\":true,\"base_bdevs\":[\"b0\",\"b1\",\"b2\",\"b3\"],\"bitmap\":$on}}")
cfg+=("{\"method\":\"bdev_mdraid_create\",\"params\":{\"name\":\"r5_off\",\"raid_level\":\"raid5\",\"assume_clean\":true,\"base_bdevs\":[\"c0\",\"c1\",\"c2\",\"c3\"],\"bitmap\":false}}")
cfg+=("{\"method\":\"mdraid_nbd_listener_add\",\"params\":{\"unix_path\":\"$tmp/nbd.sock\"}}")
for a in r1_on r1_off r5_on r5_off; do cfg+=("{\"method\":\"mdraid_nbd_export_add\",\"params\":{\"bdev_name\":\"$a\"}}"); done
(IFS=,; echo "{\"subsystems\":[{\"subsystem\":\"bdev\",\"config\":[${cfg[*]}]}]}") >"$tmp/cfg.json"

start_daemon "$tmp/cfg.json"

report=$out/bitmap-$(date -u +%Y%m%dT%H%M%SZ).txt
{
echo "# $(date -u) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# fio $(fio --version), randwrite 4 KiB, iodepth 32, ${secs}s per job after a ${warm}s warm-up, working set ${ws_mb} MiB per array"
echo "# members: malloc ${size_mb} MiB, 4 KiB blocks; mdraid serve ${BENCH_MDRAID_ARGS:--m 0x1}; bitmap chunk ${chunk_kb:+$chunk_kb KiB}${chunk_kb:-the default (64 MiB for these members)}"
if [ "${BENCH_CONTROL:-0}" = 1 ]; then echo "# CONTROL RUN (BENCH_CONTROL=1): the 'on' arrays have no bitmap either"; fi
printf '%-6s %-6s %5s %10s %8s %8s %8s %8s %10s\n' level bitmap round IOPS p50_us p99_us other% cpu_us bits
for level in r1 r5; do
  for r in $(seq 1 "$rounds"); do
    # ABBA: on,off then off,on, so a drift in the machine's load hits both.
    if [ $((r % 2)) -eq 1 ]; then modes="on off"; else modes="off on"; fi
    wait_quiet
    for mode in $modes; do
      a=${level}_$mode
      run_fio "$a" "$warm" >/dev/null
      read -r iops p50 p99 other cpu < <(run_fio "$a" "$secs")
      printf '%-6s %-6s %5s %10s %8s %8s %8s %8s %10s\n' "$level" "$mode" "$r" "$iops" "$p50" "$p99" "$other" "$cpu" "$(bits "$a")"
    done
  done
done
} | tee "$report.raw"
# Summary per level: mean IOPS on and off and their ratio; the median of
# the rounds' on/off ratios; the same over the quiet rounds only (both jobs
# of the round with other% below BENCH_QUIET, default 10); the daemon's CPU
# per write, on/off.
python3 - "$report.raw" "${BENCH_QUIET:-10}" <<'PY' | tee -a "$report.raw"
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1]) if l[:1] == "r" and l.split()[3] != "-"]
quiet = float(sys.argv[2])
for level in ("r1", "r5"):
    runs = {}
    for r in rows:
        if r[0] == level:
            runs.setdefault(r[2], {})[r[1]] = (float(r[3]), float(r[6]), float(r[7]))
    pairs = [(v["on"], v["off"]) for v in runs.values() if "on" in v and "off" in v]
    if not pairs:
        continue
    on = [p[0][0] for p in pairs]; off = [p[1][0] for p in pairs]
    ratios = [a / b for a, b in zip(on, off)]
    q = [p[0][0] / p[1][0] for p in pairs if p[0][1] < quiet and p[1][1] < quiet]
    print("# %s: on %.0f IOPS, off %.0f (means of %d rounds): on/off %.3f; median round ratio %.3f (min %.3f max %.3f); quiet rounds (other%% < %g): %s"
          % (level, st.mean(on), st.mean(off), len(pairs), st.mean(on) / st.mean(off), st.median(ratios), min(ratios), max(ratios), quiet,
             "%d, median ratio %.3f" % (len(q), st.median(q)) if q else "none"))
    cpu = [p[0][2] / p[1][2] for p in pairs]
    print("# %s: daemon CPU per write on %.2f us, off %.2f us (medians): on/off median round ratio %.3f (min %.3f max %.3f)"
          % (level, st.median(p[0][2] for p in pairs), st.median(p[1][2] for p in pairs), st.median(cpu), min(cpu), max(cpu)))
PY
mv "$report.raw" "$report"
echo "written: $report"
