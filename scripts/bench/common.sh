# Sourced by the benchmark scripts: fio, a release build of `mdraid`, a
# scratch directory, and one `mdraid serve` stopped on exit.
#   start_daemon CONFIG.json   start it (options: BENCH_MDRAID_ARGS,
#                              default "-m 0x1": one polling reactor)
#   rpc METHOD [PARAMS]        call it
out=target/bench
mkdir -p "$out"
source scripts/apt.sh
command -v fio >/dev/null || apt_install bench fio
cargo build --release -q -p mdraid
bin=${CARGO_TARGET_DIR:-target}/release/mdraid
tmp=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" 2>/dev/null && st=0 || st=$?
      echo "mdraid serve (pid $pid) had exited (status $st) before the end; its log:" >&2
      tail -20 "$tmp/mdraid.log" >&2
    fi
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

rpc() { "$bin" rpc -s "$tmp/rpc.sock" -t 30 "$@"; }

start_daemon() {
  "$bin" serve --json "$1" -r "$tmp/rpc.sock" ${BENCH_MDRAID_ARGS:--m 0x1} >"$tmp/mdraid.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 200); do rpc framework_wait_init >/dev/null 2>&1 && break; sleep 0.05; done
  rpc framework_wait_init >/dev/null || { echo "mdraid did not start: $(cat "$tmp/mdraid.log")" >&2; exit 1; }
}
