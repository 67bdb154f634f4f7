#!/usr/bin/env bash
# Puts docs/benchmarks.md together from the sections the benchmark scripts write.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
{
  echo "# Benchmarks"
  echo
  echo "Each section is rewritten by the script it names; numbers in one table come from one run."
  for section in docs/bench/crypto.md docs/bench/transfer.md docs/bench/scale.md docs/bench/shards.md docs/bench/kms.md docs/bench/operator.md; do
    [ -f "$section" ] || continue
    echo
    cat "$section"
  done
} > docs/benchmarks.md
echo "wrote docs/benchmarks.md" >&2
