#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what is missing, starts the
# services on 127.0.0.1, runs every check and test, and stops the services.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ferry/target}

bash tests/bootstrap.sh install
trap 'bash tests/bootstrap.sh stop' EXIT
bash tests/bootstrap.sh start

make ci
# The README's first command, the real encrypted transfer, must keep working.
bash examples/demo.sh
