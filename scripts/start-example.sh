#!/usr/bin/env bash
# Start the embedded daemon in the foreground with an example array:
# a raid5 over member files it creates, exported over NBD (unix socket and
# TCP on loopback). Ctrl-C stops it cleanly (arrays marked clean); running
# the script again brings the same array back (assembled from the members'
# md superblocks).
#
#   bash scripts/start-example.sh [DIR]        (default DIR: ./example)
#
# Environment:
#   MDRAID_EXAMPLE_MEMBERS  member files (default 4)
#   MDRAID_EXAMPLE_SIZE     size of each, sparse (default 256M)
#   MDRAID_EXAMPLE_LEVEL    raid level (default raid5)
#   MDRAID_RPC_SOCK         JSON-RPC socket (default /var/tmp/mdraid.sock)
#   MDRAID_NBD_TCP          NBD TCP address (default 127.0.0.1:10809)
#   MDRAID_POLL=1           poll mode like SPDK (default: --interrupt,
#                           which sleeps when idle)
#   MDRAID_EXAMPLE_NO_NBD=1 no NBD listeners/export in the config
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${1:-./example}
members=${MDRAID_EXAMPLE_MEMBERS:-4}
size=${MDRAID_EXAMPLE_SIZE:-256M}
level=${MDRAID_EXAMPLE_LEVEL:-raid5}
sock=${MDRAID_RPC_SOCK:-/var/tmp/mdraid.sock}
tcp=${MDRAID_NBD_TCP:-127.0.0.1:10809}
tcp_addr=${tcp%:*}
tcp_port=${tcp##*:}

cargo build --release -p mdraid
bin=$PWD/target/release/mdraid
if [ -n "${CARGO_TARGET_DIR:-}" ]; then bin=$CARGO_TARGET_DIR/release/mdraid; fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
names=()
entries=()
for i in $(seq 0 $((members - 1))); do
  f=$dir/member$i.img
  [ -e "$f" ] || truncate -s "$size" "$f"
  names+=("\"m$i\"")
  entries+=("{\"method\": \"bdev_aio_create\", \"params\": {\"name\": \"m$i\", \"filename\": \"$f\"}}")
done
base=$(IFS=,; echo "${names[*]}")
entries+=("{\"method\": \"bdev_mdraid_create\", \"params\": {\"name\": \"md0\", \"raid_level\": \"$level\", \"base_bdevs\": [$base], \"strip_size_kb\": 64}}")
bdev=$(IFS=,; echo "${entries[*]}")

nbd_sock=$dir/nbd.sock
if [ "${MDRAID_EXAMPLE_NO_NBD:-0}" = 1 ]; then
  nbd=""
else
  nbd=", {\"subsystem\": \"mdraid\", \"config\": [
    {\"method\": \"mdraid_nbd_listener_add\", \"params\": {\"unix_path\": \"$nbd_sock\"}},
    {\"method\": \"mdraid_nbd_listener_add\", \"params\": {\"address\": \"$tcp_addr\", \"port\": $tcp_port}},
    {\"method\": \"mdraid_nbd_export_add\", \"params\": {\"bdev_name\": \"md0\"}}]}"
fi
cfg=$dir/mdraid.json
# No uuid in the config: on the first run the members are blank and the
# array is created; later the daemon assembles what the members carry.
cat > "$cfg" <<EOF
{"subsystems": [{"subsystem": "bdev", "config": [$bdev]}$nbd]}
EOF

mode=(--interrupt)
[ "${MDRAID_POLL:-0}" = 1 ] && mode=()

cat <<EOF
mdraid example: $level array md0 over $members x $size member files in $dir
  config:       $cfg
  JSON-RPC:     $sock
EOF
if [ -z "$nbd" ]; then
  echo "  (no NBD export: MDRAID_EXAMPLE_NO_NBD=1)"
else
  cat <<EOF
  NBD URI:      nbd://$tcp/md0   (or nbd+unix:///md0?socket=$nbd_sock)

In another terminal:
  nbdinfo nbd://$tcp/md0
  fio --name=md0 --ioengine=nbd --uri=nbd://$tcp/md0 --rw=randrw --bs=4k --iodepth=32 --size=64M --verify=crc32c
  qemu-img info nbd://$tcp/md0
EOF
fi
cat <<EOF
  $bin status -s $sock
  PYTHONPATH=scripts spdk-rpc -s $sock --plugin rpc_mdraid_plugin bdev_mdraid_get_bdevs
Ctrl-C stops the daemon cleanly.

EOF
exec "$bin" serve --json "$cfg" -r "$sock" "${mode[@]}"
