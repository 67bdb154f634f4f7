#!/usr/bin/env bash
# Ferry's encryption against `openssl speed` in the same run, on one core, and
# the peak memory of encrypting 4 GiB. Writes docs/bench/crypto.md, then
# docs/benchmarks.md (with docs/bench/transfer.md from transfer.sh).
#   bash docs/bench/run.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ferry/target}
out=docs/bench/crypto.md
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "building (release)..." >&2
cargo build -q --locked --release -p ferry-job-runner --bin job-runner
cargo bench -q --locked -p ferry-job-runner --bench crypto --no-run
bench() { taskset -c 0 cargo bench -q --locked -p ferry-job-runner --bench crypto -- "$@" 2>/dev/null | grep -v '^$'; }

echo "openssl speed..." >&2
ossl=$(taskset -c 0 openssl speed -evp aes-256-gcm -bytes 16384 -seconds 3 2>/dev/null | awk '/^AES-256-GCM/ {print $2}')
# openssl reports thousands of bytes per second.
ossl_mb=$(python3 -c "print(round(float('${ossl%k}') * 1000 / 1e6))")

echo "Ferry throughput..." >&2
ferry=$(bench throughput)
echo "Ferry memory..." >&2
mem=$(bench memory 4)

echo "job-runner on a 4 GiB file..." >&2
mkdir -p "$tmp/demo/source" "$tmp/secrets/demo-kek"
truncate -s 4G "$tmp/demo/source/big.csv"
"$CARGO_TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release/job-runner" keygen --force --out "$tmp/secrets/demo-kek/kek" 2>/dev/null
run=$(python3 - "$CARGO_TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release/job-runner" "$tmp" <<'PY'
import resource, subprocess, sys, time
runner, tmp = sys.argv[1], sys.argv[2]
t = time.time()
subprocess.run([runner, "run", "--connector", "examples/local-to-local/connector.yaml",
                "--secrets-dir", f"{tmp}/secrets", "--base-dir", tmp, "--audit-log", f"{tmp}/audit"],
               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
secs = time.time() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"{secs:.1f}\t{rss}")
PY
)
run_secs=$(cut -f1 <<<"$run")
run_rss=$(cut -f2 <<<"$run")

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
{
  echo "## Encryption"
  echo
  echo "Reproduce with \`bash docs/bench/run.sh\` (release build, pinned to one core with"
  echo "\`taskset -c 0\`). Measured $(date -u +%Y-%m-%d) on: $cpu,"
  echo "$(nproc) cores, $(openssl version | cut -d' ' -f1-2), $(rustc --version | cut -d' ' -f1-2)."
  echo
  echo "### AES-256-GCM on one core (MB/s, 10^6 bytes/s)"
  echo
  echo "| what | MB/s |"
  echo "| --- | ---: |"
  echo "| \`openssl speed -evp aes-256-gcm -bytes 16384\` (reference) | $ossl_mb |"
  while IFS=$'\t' read -r name value; do
    echo "| $name | $value |"
  done <<<"$ferry"
  echo
  echo "Ferry seals with \`ring\` (behind \`job-runner/src/crypto/aead.rs\`); the pure-Rust"
  echo "\`aes-gcm\` row is the alternative it was chosen over. The streaming rows are the"
  echo "whole Tink format (HKDF, per-segment nonces, buffering). The object-path row adds"
  echo "the envelope and the SHA-256 of plaintext and ciphertext that every manifest"
  echo "entry records: that is a transfer's CPU cost per core."
  echo
  echo "### Memory while encrypting 4 GiB"
  echo
  echo "| what | result |"
  echo "| --- | --- |"
  echo "| encryption state machine alone (\`cargo bench -p ferry-job-runner --bench crypto -- memory 4\`) | $(cut -f3- <<<"$mem" | tr '\t' ' ') |"
  echo "| \`job-runner run\`, one 4 GiB file, local folder to local folder (encrypt, hash, write, fsync) | ${run_secs} s, peak RSS $((run_rss / 1024)) MiB |"
  echo
  echo "Memory does not grow with the object: one 1 MiB segment is buffered per object"
  echo "in flight, plus at most four 1 MiB chunks queued towards the destination."
} > "$out"
bash docs/bench/assemble.sh
