#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian 12 machine (idempotent):
# mdadm and blkid as format oracles for the md superblocks we write;
# nbdinfo, qemu-io/qemu-img and fio as real NBD clients; SPDK's Python
# RPC client.
set -euo pipefail
source "$(dirname "$0")/apt.sh"
need=()
command -v mdadm >/dev/null 2>&1 || [ -x /usr/sbin/mdadm ] || [ -x /sbin/mdadm ] || need+=(mdadm)
command -v blkid >/dev/null 2>&1 || [ -x /usr/sbin/blkid ] || [ -x /sbin/blkid ] || need+=(util-linux)
command -v nbdinfo >/dev/null 2>&1 || need+=(libnbd-bin)
command -v qemu-io >/dev/null 2>&1 || need+=(qemu-utils)
command -v fio >/dev/null 2>&1 || need+=(fio)
apt_install install-deps "${need[@]}"
# SPDK's own Python RPC client (the version matching SPDK v26.05).
if ! python3 -c 'import spdk.rpc.client' >/dev/null 2>&1; then
  echo "install-deps: installing SPDK's Python client (pip: spdk==26.5)"
  python3 -m pip install -q --disable-pip-version-check spdk==26.5
fi
mkdir -p target
# Building the SPDK host (only when SPDK_DIR names an SPDK tree).
if [ -n "${SPDK_DIR:-}" ]; then
  bash "$(dirname "$0")/install-spdk-deps.sh"
fi
