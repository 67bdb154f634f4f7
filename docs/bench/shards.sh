#!/usr/bin/env bash
# A run spread over shards, local folder to local folder: one Ferry process,
# then 2 and 3 shard processes at once followed by the last step (what the
# shard pods and the last pod of a run with `parallelism` do), against rclone
# on the same tree in the same run. Writes docs/bench/shards.md, then
# docs/benchmarks.md.
#   bash docs/bench/shards.sh [COUNT]        (COUNT defaults to 100000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export FERRY_CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FERRY_CACHE/target}
COUNT=${1:-100000}
out=docs/bench/shards.md
work=$(mktemp -d /var/tmp/ferry-shards.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "installing and building..." >&2
bash tests/bootstrap.sh install >/dev/null
cargo build -q --locked --release -p ferry-job-runner --bin job-runner
runner="$CARGO_TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release/job-runner"
mkdir -p "$work/secrets/kek"
"$runner" keygen --force --out "$work/secrets/kek/kek" 2>/dev/null
cat > "$work/scale.yaml" <<EOF
apiVersion: ferry.dev/v1alpha1
kind: Connector
metadata: {name: shards, namespace: bench}
spec:
  source: {local: {path: src}}
  destination: {local: {path: dst}}
  compliance: {dataResidency: any}
  encryption: {keyRef: {secretRef: {name: kek}}}
EOF
: > "$work/rclone.conf"

echo "making $COUNT objects of 200 bytes, 1000 to a folder..." >&2
python3 docs/bench/tree.py "$work/src" "$COUNT"
sync

# Seconds of wall time of "$@" (run in $work, must succeed) in S; the peak RSS
# (MiB) of each command, largest first, in M.
timed() {
  local t0 t1
  t0=$(date +%s.%N)
  (cd "$work" && eval "$@")
  t1=$(date +%s.%N)
  S=$(echo "$t1 - $t0" | bc -l | xargs printf %.2f)
  M=$(for f in "$work"/rss.*; do echo $(( $(cat "$f") / 1024 )); done | sort -rn | head -1)
  rm -f "$work"/rss.*
}
run() { # name, then the runner's arguments
  local name=$1; shift
  echo "/usr/bin/time -f %M -o rss.$name $runner run --connector scale.yaml --secrets-dir secrets --audit-log audit.$name.jsonl $* >out.$name 2>err.$name"
}
objects() { find "$work/dst" -type f -not -path '*/.ferry/*' | wc -l; }

rows=()
rm -rf "$work/dst"; sync
timed "/usr/bin/time -f %M -o rss.rclone rclone copy --config rclone.conf src dst >/dev/null 2>&1"
rows+=("| rclone copy | $S | $M | — |")
for shards in 1 2 3; do
  rm -rf "$work/dst"; sync
  if [ "$shards" = 1 ]; then
    timed "$(run one --run-id r1)"
    rows+=("| Ferry, one process | $S | $M | — |")
  else
    # The shards at once, then the last step: a run's pods, one after the other.
    cmds=""
    for i in $(seq 0 $((shards - 1))); do cmds+="$(run "s$i" --run-id r$shards --shard "$i/$shards") & "; done
    timed "${cmds} wait"
    local_s=$S local_m=$M
    timed "$(run last --run-id r$shards --commit-shards "$shards")"
    total=$(echo "$local_s + $S" | bc -l | xargs printf %.2f)
    rows+=("| Ferry, $shards shards then the last step | $total | $local_m | $local_s + $S |")
  fi
  [ "$(objects)" = "$COUNT" ] || { echo "expected $COUNT objects, found $(objects)" >&2; exit 1; }
  "$runner" verify --kek "$work/secrets/kek/kek" --dir "$work/dst" >/dev/null
  echo "${rows[-1]}" >&2
done

{
  echo "## A run spread over shards"
  echo
  echo "Reproduce with \`bash docs/bench/shards.sh $COUNT\`. Measured $(date -u +%Y-%m-%d) on"
  echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; rclone $(rclone version | head -1 | awk '{print $2}'), Ferry release build."
  echo "$COUNT objects of 200 bytes, 1000 to a folder, local folder to local folder, a full run into an"
  echo "empty destination each time. The shards run as processes at once on this machine, as"
  echo "the shard pods of a run with \`parallelism\` would run on nodes, then the last step merges"
  echo "their parts into the run's manifest; each destination is checked with \`verify\`. Peak RSS is"
  echo "the largest of one process, in MiB."
  echo
  echo "| run | seconds | peak RSS | shards + last step |"
  echo "| --- | ---: | ---: | --- |"
  printf '%s\n' "${rows[@]}"
  echo
  echo "On one machine the shards gain nothing: they share its two cores and its one disk, and a full"
  echo "local run is bound by encrypting and flushing each file before its rename. Shards move that"
  echo "work to other nodes (each shard pod has its own CPU, disk and network there), which this"
  echo "machine cannot show. Each shard lists the whole source and destination and keeps its share"
  echo "of the keys; the last step reads the parts' segments once and writes the manifest."
} > "$out"
echo "wrote $out" >&2
bash docs/bench/assemble.sh
