#!/usr/bin/env bash
# What building the SPDK host (ffi/, with SPDK_DIR set) needs beyond
# install-deps.sh, on Debian 12: libclang for bindgen, pkg-config to find
# SPDK, a C compiler for the shim. SPDK itself is built outside the project
# (see README: "The SPDK host"); this installs nothing of it.
set -euo pipefail
source "$(dirname "$0")/apt.sh"
need=()
# libclang-dev: libclang itself (libclang.so, not libclang-cpp.so.N, which
# other packages bring) and the clang headers bindgen parses with.
compgen -G '/usr/lib/llvm-*/lib/libclang.so' >/dev/null || need+=(libclang-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v python3 >/dev/null 2>&1 || need+=(python3)
apt_install install-spdk-deps "${need[@]}"
