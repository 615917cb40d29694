#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian 12 machine (idempotent).
set -euo pipefail
need=()
# (The engine's tests need nothing beyond the Rust toolchain yet.)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
mkdir -p target
