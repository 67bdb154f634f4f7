#!/usr/bin/env bash
# Reconcile benchmark of the operator against the in-process fake API; writes
# docs/bench/operator.md and reassembles docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry/target}"
out=$(cargo bench -q -p ferry-operator --bench reconcile 2>/dev/null)
echo "$out" >&2
line() { echo "$out" | grep -F "$1"; }
field() { sed -n "s/.*$1=\([0-9.]*\) ms.*/\1/p"; }
row() {
  local l; l=$(line "$1")
  echo "| $2 | $(echo "$l" | field p50) | $(echo "$l" | field p99) | $(echo "$l" | field max) |"
}
cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
caches=$(line "operator caches")
{
  echo "## Operator reconciles"
  echo
  echo "Reproduce with \`bash docs/bench/operator.sh\` (runs \`cargo bench -p ferry-operator --bench reconcile\`)."
  echo "Measured $(date -u +%F) on: ${cpu}, $(nproc) cores, $(rustc --version | cut -d' ' -f1-2)."
  echo "1000 Connectors and 1000 ConnectorRuns are reconciled one after the other against"
  echo "\`kube-fake-client\` in the same process (one thread): every API call is an in-memory"
  echo "request, so these times are the operator's own work plus the fake API's, without"
  echo "network latency."
  echo
  echo "| reconcile | p50 ms | p99 ms | max ms |"
  echo "| --- | ---: | ---: | ---: |"
  row "connector reconcile" "Connector (schedule, checks, cached runs, status)"
  row "run reconcile, first" "ConnectorRun, first (pin spec, checks, 5 objects applied, status)"
  row "run created -> pod applied" "ConnectorRun created -> Pod applied"
  row "run reconcile, steady" "ConnectorRun, steady state (pod pending, nothing written)"
  echo
  echo "Target: under 100 ms from a created run to its pod (p50)."
  echo
  echo "Memory: the benchmark's own process holds the fake API and every object"
  echo "($(line "peak RSS of this process" | sed 's/.*: //') peak), which says nothing of the"
  echo "operator. The operator's memory is its watch caches, so a fresh process loads what"
  echo "the benchmark left (1000 Connectors, 1000 ConnectorRuns with their pinned specs,"
  echo "1000 Pods, cached as metadata only as the operator does) into reflector stores:"
  echo "$(echo "$caches" | sed 's/.*Pods; //')."
  echo "Target: under 50 MiB."
} > docs/bench/operator.md
bash docs/bench/assemble.sh
