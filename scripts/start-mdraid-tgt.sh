#!/usr/bin/env bash
# Start mdraid_tgt (the SPDK app with the mdraid module and SPDK's NVMe-oF
# target) in the foreground with an example: a raid5 over member files it
# creates (aio bdevs), exported as the namespace of an NVMe/TCP subsystem.
# Ctrl-C (SIGINT) stops it cleanly (the array is marked clean); running the
# script again assembles the same array from the members' md superblocks.
#
#   SPDK_DIR=~/spdk bash scripts/start-mdraid-tgt.sh [DIR] [-- MORE_APP_ARGS...]
#
# Then, e.g.:
#   $SPDK_DIR/build/bin/spdk_nvme_perf --no-huge -s 1024 -q 32 -o 4096 -w randwrite -t 5 \
#       -r 'trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.2016-06.io.spdk:mdraid'
#   PYTHONPATH=scripts $SPDK_DIR/scripts/rpc.py --plugin rpc_mdraid_plugin bdev_mdraid_get_bdevs
#   (or the kernel initiator: nvme connect -t tcp -a 127.0.0.1 -s 4420 -n nqn.2016-06.io.spdk:mdraid)
#
# Environment:
#   SPDK_DIR                  an SPDK tree built with shared libraries (required)
#   MDRAID_EXAMPLE_MEMBERS    member files (default 4)
#   MDRAID_EXAMPLE_SIZE       size of each, sparse (default 256M)
#   MDRAID_EXAMPLE_LEVEL      raid level (default raid5)
#   MDRAID_NVMF_ADDR          NVMe/TCP listener (default 127.0.0.1:4420)
#   MDRAID_NVMF_NQN           subsystem NQN (default nqn.2016-06.io.spdk:mdraid)
#   MDRAID_RPC_SOCK           SPDK RPC socket (default /var/tmp/spdk.sock)
#   MDRAID_TGT_OPTS           SPDK app options (default: --no-huge -s 2048 --no-pci)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SPDK_DIR:?set SPDK_DIR to an SPDK tree built with shared libraries}"

dir=./example-tgt
if [ $# -gt 0 ] && [ "$1" != "--" ]; then dir=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" = "--" ]; then shift; fi
members=${MDRAID_EXAMPLE_MEMBERS:-4}
size=${MDRAID_EXAMPLE_SIZE:-256M}
level=${MDRAID_EXAMPLE_LEVEL:-raid5}
addr=${MDRAID_NVMF_ADDR:-127.0.0.1:4420}
nqn=${MDRAID_NVMF_NQN:-nqn.2016-06.io.spdk:mdraid}
sock=${MDRAID_RPC_SOCK:-/var/tmp/spdk.sock}
read -r -a opts <<<"${MDRAID_TGT_OPTS:---no-huge -s 2048 --no-pci}"

bash scripts/install-spdk-deps.sh
cargo build --release -p mdraid-spdk --bin mdraid_tgt >&2
exe="$(realpath "${CARGO_TARGET_DIR:-target}/release/mdraid_tgt")"

mkdir -p "$dir"
dir="$(realpath "$dir")"
bdevs=()
names=()
for i in $(seq 0 $((members - 1))); do
  f="$dir/member$i.img"
  [ -e "$f" ] || truncate -s "$size" "$f"
  bdevs+=("{\"method\":\"bdev_aio_create\",\"params\":{\"name\":\"aio$i\",\"filename\":\"$f\",\"block_size\":512}}")
  names+=("aio$i")
done
bdevs+=("{\"method\":\"bdev_mdraid_create\",\"params\":{\"name\":\"md0\",\"raid_level\":\"$level\",\"base_bdevs\":\"${names[*]}\",\"strip_size_kb\":64}}")
cfg="$dir/mdraid_tgt.json"
{
  echo '{"subsystems":[{"subsystem":"bdev","config":['
  (IFS=,; echo "${bdevs[*]}")
  echo ']},{"subsystem":"nvmf","config":['
  echo '{"method":"nvmf_create_transport","params":{"trtype":"TCP"}},'
  echo "{\"method\":\"nvmf_create_subsystem\",\"params\":{\"nqn\":\"$nqn\",\"allow_any_host\":true,\"serial_number\":\"MDRAID0001\",\"model_number\":\"mdraid\"}},"
  echo "{\"method\":\"nvmf_subsystem_add_ns\",\"params\":{\"nqn\":\"$nqn\",\"namespace\":{\"bdev_name\":\"md0\"}}},"
  echo "{\"method\":\"nvmf_subsystem_add_listener\",\"params\":{\"nqn\":\"$nqn\",\"listen_address\":{\"trtype\":\"TCP\",\"adrfam\":\"IPv4\",\"traddr\":\"${addr%:*}\",\"trsvcid\":\"${addr##*:}\"}}}"
  echo ']}]}'
} >"$cfg"

echo "mdraid_tgt: $level md0 over $members files in $dir, NVMe/TCP $addr $nqn, RPC $sock" >&2
exec "$exe" "${opts[@]}" -r "$sock" -c "$cfg" "$@"
