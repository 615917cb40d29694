#!/usr/bin/env bash
# Runs every test of the project. Installs what the tests need first.
# Used by the README and by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

# The simulator sweep is sized by MDRAID_SIM_SEEDS / MDRAID_SIM_OPS
# (defaults: 500 seeds x 5000 operations).
# Tests that need tools fail (not skip) when a tool is missing here.
export MDRAID_REQUIRE_TOOLS=1
set +e
cargo test --workspace -- --show-output 2>&1 | tee target/test.log
status=${PIPESTATUS[0]}
set -e

echo
echo "== summary =="
grep -E '^test result:|^sweep:|Running ' target/test.log | sed 's/^ *//'
exit "$status"
