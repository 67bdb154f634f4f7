#!/usr/bin/env bash
# Ferry's main job without a cluster: a real encrypted transfer between two local
# folders with examples/local-to-local/connector.yaml, then verification and
# decryption giving the data back. Work files go to .ferry-demo/ (git-ignored).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ferry/target}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

host=$(rustc -vV | sed -n 's/^host: //p')
runner="$CARGO_TARGET_DIR/$host/debug/job-runner"
if [ -x "$runner" ]; then
  step "building job-runner (cached in $CARGO_TARGET_DIR)"
else
  step "building job-runner: a first build compiles ~450 crates and takes 15-30 minutes on 2 cores"
fi
# Cargo's own progress, on screen: a first build is long, not stuck. The test
# profile, as the test command builds the binaries: one build serves both.
cargo build --locked --profile test -p ferry-job-runner --bin job-runner

work=.ferry-demo
rm -rf "$work"
mkdir -p "$work/demo/source/customers" "$work/demo/source/events" "$work/demo/source/scratch"

step "making sample data in $work/demo/source"
{
  echo "id,name,email,country"
  for i in $(seq 1 20000); do echo "$i,Customer $i,customer$i@example.com,FR"; done
} > "$work/demo/source/customers/2026-11-01.csv"
for i in $(seq 1 3000); do echo "{\"event\":\"login\",\"user\":$i}"; done > "$work/demo/source/events/logins.json"
head -c 33554432 /dev/urandom | base64 -w 120 > "$work/demo/source/events/large-export.csv"   # ~43 MiB, streamed
echo "not copied: excluded" > "$work/demo/source/scratch/tmp.csv"
echo "not copied: not included" > "$work/demo/source/README.txt"
ls -lR "$work/demo/source" | grep -v '^total'

step "generating a key-encryption key (written to a file, never printed)"
"$runner" keygen --out "$work/secrets/demo-kek/kek"

step "running the Connector (local mode)"
"$runner" run --connector examples/local-to-local/connector.yaml \
  --secrets-dir "$work/secrets" --base-dir "$work" --audit-log "$work/audit.jsonl"
echo "audit trail ($work/audit.jsonl):"
cut -c1-160 "$work/audit.jsonl"

step "what landed at the destination is encrypted"
find "$work/demo/destination" -type f | sort
head -c 96 "$work/demo/destination/customers/2026-11-01.csv" | od -A d -c | head -4

step "verifying the destination against its signed manifest (decrypting every object)"
"$runner" verify --kek "$work/secrets/demo-kek/kek" --dir "$work/demo/destination" --deep

step "decrypting everything back"
"$runner" decrypt --kek "$work/secrets/demo-kek/kek" --dir "$work/demo/destination" --out "$work/decrypted"
for f in customers/2026-11-01.csv events/logins.json events/large-export.csv; do
  cmp "$work/demo/source/$f" "$work/decrypted/$f"
done
echo "identical to the source: customers/2026-11-01.csv, events/logins.json, events/large-export.csv"
head -3 "$work/decrypted/customers/2026-11-01.csv"

step "running again: incremental sync copies nothing new"
"$runner" run --connector examples/local-to-local/connector.yaml \
  --secrets-dir "$work/secrets" --base-dir "$work" --audit-log "$work/audit.jsonl"

printf '\ndone: the demo files are in %s\n' "$work"
