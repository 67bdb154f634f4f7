#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what is missing, starts the
# services on 127.0.0.1, runs every check and test, and stops the services.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export FERRY_CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FERRY_CACHE/target}
# Incremental caches double the target folder and help nothing in a CI build.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

bash tests/bootstrap.sh install
trap 'bash tests/bootstrap.sh stop' EXIT
bash tests/bootstrap.sh start

make ci TEST_LOG="$FERRY_CACHE/test-rust.log"
# The README's first command, the real encrypted transfer, must keep working.
bash examples/demo.sh

trap - EXIT
bash tests/bootstrap.sh stop

# One closing line for the whole run: every Rust test binary's counts added up.
grep -E '^test result: ' "$FERRY_CACHE/test-rust.log" \
  | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/' \
  | awk '{p += $1; f += $2} END {printf "tests: %d passed, %d failed\n", p, f}'
