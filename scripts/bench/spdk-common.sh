# Sourced by the SPDK benchmark scripts (spdk.sh, spdk-cost.sh): the
# release build of the module, a bdevperf config with both modules' arrays
# ($tmp/cfg.json), the memory options ($mem) and the job list ($jobs).
: "${SPDK_DIR:?set SPDK_DIR to an SPDK tree built with shared libraries}"
secs=${BENCH_SECS:-4}
rounds=${BENCH_ROUNDS:-3}
qd=${BENCH_QD:-64}
out=target/bench
mkdir -p "$out"
# Memory: --no-huge (4 KiB pages) unless BENCH_HUGE=1, which needs 2 MiB
# hugepages set aside (e.g. 1536 in /proc/sys/vm/nr_hugepages) and hugetlbfs
# mounted (/dev/hugepages).
if [ -n "${BENCH_HUGE:-}" ]; then mem="-s 2048"; else mem="--no-huge -s 2048"; fi
bash scripts/install-spdk-deps.sh >/dev/null
cargo build --release -q -p mdraid-spdk
so="$(realpath "${CARGO_TARGET_DIR:-target}/release/libmdraid_spdk.so")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export LD_LIBRARY_PATH="$SPDK_DIR/build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# Members: 32 MiB malloc bdevs with 4 KiB blocks (raid5f needs 4 KiB and a
# strip the write size fills: 64 KiB strips, 192 KiB full stripes).
mb=32
blocks=$((mb * 1024 * 1024 / 4096))
cfg=()
malloc() { cfg+=("{\"method\":\"bdev_malloc_create\",\"params\":{\"name\":\"$1\",\"num_blocks\":$blocks,\"block_size\":4096}}"); }
for set in s1 m1 b1; do for i in 0 1; do malloc "${set}_$i"; done; done
for set in s0 m0; do for i in 0 1 2 3; do malloc "${set}_$i"; done; done
for set in s5 m5 b5; do for i in 0 1 2 3; do malloc "${set}_$i"; done; done
members() { local s=$1 n=$2 i l=(); for i in $(seq 0 $((n - 1))); do l+=("\"${s}_$i\""); done; (IFS=,; echo "[${l[*]}]"); }
cfg+=("{\"method\":\"bdev_raid_create\",\"params\":{\"name\":\"spdk_r1\",\"raid_level\":\"raid1\",\"base_bdevs\":$(members s1 2),\"strip_size_kb\":0,\"superblock\":true}}")
cfg+=("{\"method\":\"bdev_raid_create\",\"params\":{\"name\":\"spdk_r0\",\"raid_level\":\"raid0\",\"base_bdevs\":$(members s0 4),\"strip_size_kb\":64,\"superblock\":true}}")
cfg+=("{\"method\":\"bdev_raid_create\",\"params\":{\"name\":\"spdk_r5\",\"raid_level\":\"raid5f\",\"base_bdevs\":$(members s5 4),\"strip_size_kb\":64,\"superblock\":true}}")
cfg+=("{\"method\":\"bdev_mdraid_create\",\"params\":{\"name\":\"md_r1\",\"raid_level\":\"raid1\",\"assume_clean\":true,\"base_bdevs\":$(members m1 2),\"bitmap\":false}}")
cfg+=("{\"method\":\"bdev_mdraid_create\",\"params\":{\"name\":\"md_r0\",\"raid_level\":\"raid0\",\"assume_clean\":true,\"base_bdevs\":$(members m0 4),\"strip_size_kb\":64}}")
cfg+=("{\"method\":\"bdev_mdraid_create\",\"params\":{\"name\":\"md_r5\",\"raid_level\":\"raid5\",\"assume_clean\":true,\"base_bdevs\":$(members m5 4),\"strip_size_kb\":64,\"bitmap\":false}}")
cfg+=("{\"method\":\"bdev_mdraid_create\",\"params\":{\"name\":\"mdbm_r1\",\"raid_level\":\"raid1\",\"assume_clean\":true,\"base_bdevs\":$(members b1 2)}}")
cfg+=("{\"method\":\"bdev_mdraid_create\",\"params\":{\"name\":\"mdbm_r5\",\"raid_level\":\"raid5\",\"assume_clean\":true,\"base_bdevs\":$(members b5 4),\"strip_size_kb\":64}}")
(IFS=,; echo "{\"subsystems\":[{\"subsystem\":\"bdev\",\"config\":[${cfg[*]}]}]}") >"$tmp/cfg.json"

# name  spdk_bdev  mdraid_bdev  workload  io_size
jobs=(
  "raid1-randread spdk_r1 md_r1 randread 4096"
  "raid1-randwrite spdk_r1 md_r1 randwrite 4096"
  "raid0-randread spdk_r0 md_r0 randread 4096"
  "raid0-randwrite spdk_r0 md_r0 randwrite 4096"
  "raid5-fullstripe-write spdk_r5 md_r5 write 196608"
  "raid5-randread spdk_r5 md_r5 randread 4096"
  "bitmap-raid1-randwrite md_r1 mdbm_r1 randwrite 4096"
  "bitmap-raid5-fullstripe-write md_r5 mdbm_r5 write 196608"
)
