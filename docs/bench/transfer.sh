#!/usr/bin/env bash
# Ferry against rclone (plain and through a crypt remote), side by side in one
# run, on the same local servers: s3s-fs (S3), Azurite (Azure Blob) and OpenSSH
# (SFTP), all on 127.0.0.1. Writes docs/bench/transfer.md.
#   bash docs/bench/transfer.sh [SIZE_MIB] [SMALL_COUNT]
# ROUTES="s3 sftp,sftp s3" runs a subset; RSS_MIB (default 4096, 0 to skip) sizes
# the object of the memory table; REPS (default 5, odd) is how many times each
# measurement runs: the tables give the median time and the largest peak RSS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export FERRY_CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FERRY_CACHE/target}
# Loopback http only: a CA bundle from the environment would only confuse rclone.
unset AWS_CA_BUNDLE
BIG_MIB=${1:-1024}
SMALL=${2:-1000}
REPS=${REPS:-5}
S3S_PORT=8014
out=docs/bench/transfer.md
work=$(mktemp -d /var/tmp/ferry-bench.XXXXXX)
s3s_pid=""
shm=""
cleanup() {
  [ -n "$s3s_pid" ] && kill "$s3s_pid" 2>/dev/null || true
  [ -n "$shm" ] && rm -rf "$shm"
  bash tests/bootstrap.sh stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "installing and building..." >&2
bash tests/bootstrap.sh install
if [ ! -x "$FERRY_CACHE/s3s/bin/s3s-fs" ]; then
  cargo install -q s3s-fs --version 0.14.1 --locked --features binary --root "$FERRY_CACHE/s3s"
fi
cargo build -q --locked --release -p ferry-job-runner --bin job-runner
runner="$CARGO_TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release/job-runner"
bash tests/bootstrap.sh start >/dev/null
# shellcheck disable=SC1091
source "$FERRY_CACHE/services/env"

# One bucket per dataset, read from its root: s3s-fs answers HEAD on a prefix badly.
mkdir -p "$work/s3root/srcbig" "$work/s3root/srcsmall" "$work/s3root/dst"
"$FERRY_CACHE/s3s/bin/s3s-fs" --host 127.0.0.1 --port $S3S_PORT --access-key bench --secret-key bench-secret \
  "$work/s3root" >"$work/s3s.log" 2>&1 &
s3s_pid=$!
for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/$S3S_PORT) 2>/dev/null && break; sleep 0.2; done

echo "making data: 1 x ${BIG_MIB} MiB, ${SMALL} x 64 KiB..." >&2
mkdir -p "$work/data/srcbig" "$work/data/srcsmall"
head -c $((BIG_MIB << 20)) /dev/urandom > "$work/data/srcbig/object.bin"
python3 - "$work/data/srcsmall" "$SMALL" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"part-{i:05}.bin"), "wb") as f:
        f.write(os.urandom(64 * 1024))
PY
# The SFTP source holds the same data.
cp -r "$work/data/srcbig" "$work/data/srcsmall" "$FERRY_SFTP_ROOT/"
# Azurite container for the destinations.
"$FERRY_PYTHON" tests/azurite/create_container.py "$FERRY_AZURITE_ENDPOINT" bench

# rclone remotes.
dev_key=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==
crypt_pw=$(rclone obscure bench-crypt-password)
# rclone 1.60's Azure backend only reaches an emulator through a SAS URL.
sas=$("$FERRY_PYTHON" - "$dev_key" <<'PY'
import sys
from datetime import datetime, timedelta, timezone
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
perm = ContainerSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True)
print(generate_container_sas("devstoreaccount1", "bench", account_key=sys.argv[1], permission=perm,
                             expiry=datetime.now(timezone.utc) + timedelta(hours=4)))
PY
)
cat > "$work/rclone.conf" <<EOF
[s3]
type = s3
provider = Other
access_key_id = bench
secret_access_key = bench-secret
endpoint = http://127.0.0.1:$S3S_PORT
region = us-east-1
force_path_style = true

[azure]
type = azureblob
sas_url = $FERRY_AZURITE_ENDPOINT/bench?$sas

[sftp]
type = sftp
host = 127.0.0.1
port = $FERRY_SFTP_PORT
user = $FERRY_SFTP_USER
key_file = $FERRY_SFTP_KEY
known_hosts_file = $FERRY_CACHE/services/known_hosts

[s3crypt]
type = crypt
remote = s3:dst/rclone-crypt
password = $crypt_pw

[azurecrypt]
type = crypt
remote = azure:bench/rclone-crypt
password = $crypt_pw

[sftpcrypt]
type = crypt
remote = sftp:dst/rclone-crypt
password = $crypt_pw
EOF
# The S3 source is uploaded through the S3 API, as objects reach a real store:
# s3s-fs then keeps each object's ETag. (Files dropped into its folder have none,
# and it recomputes the MD5 of the whole file on every GET, ranged or not.)
rclone --config "$work/rclone.conf" copy "$work/data/srcbig" s3:srcbig
rclone --config "$work/rclone.conf" copy "$work/data/srcsmall" s3:srcsmall
# Several GiB were just written: flush them now, not during the measurements.
sync

# Ferry's secrets and endpoints.
mkdir -p "$work/secrets/s3" "$work/secrets/az" "$work/secrets/ssh" "$work/secrets/hostkey" "$work/secrets/kek"
printf bench > "$work/secrets/s3/accessKeyId"
printf bench-secret > "$work/secrets/s3/secretAccessKey"
printf '%s' "$dev_key" > "$work/secrets/az/accountKey"
printf '%s' "$FERRY_SFTP_USER" > "$work/secrets/ssh/username"
cp "$FERRY_SFTP_KEY" "$work/secrets/ssh/privateKey"
cp "$FERRY_SFTP_HOST_KEY" "$work/secrets/hostkey/knownHosts"
"$runner" keygen --force --out "$work/secrets/kek/kek" 2>/dev/null

ferry_end() { # kind, bucket-or-path prefix
  case $1 in
    s3) echo "s3: {bucket: $2, prefix: \"$3\", region: us-east-1, endpoint: \"http://127.0.0.1:$S3S_PORT\", forcePathStyle: true, insecurePlainHttpOnLoopback: true, credentials: {secretRef: {name: s3}}}" ;;
    azure) echo "azureBlob: {account: devstoreaccount1, container: bench, prefix: \"$3\", region: r, endpoint: \"$FERRY_AZURITE_ENDPOINT\", insecurePlainHttpOnLoopback: true, credentials: {secretRef: {name: az}}}" ;;
    sftp) echo "sftp: {host: \"127.0.0.1\", port: $FERRY_SFTP_PORT, path: \"$2/${3%/}\", region: r, credentials: {secretRef: {name: ssh}}, hostKey: {secretRef: {name: hostkey}}}" ;;
  esac
}

# Runs a command, prints "seconds<TAB>peak RSS KiB".
measure() {
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.time()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
secs = time.time() - t
if r.returncode != 0:
    sys.stderr.write(r.stderr.decode(errors="replace")[-2000:])
    sys.exit(r.returncode)
print(f"{secs:.2f}\t{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
PY
}

mbps() { python3 -c "print(f'{$1 / $2 / 1e6:.0f}')"; }

# Ferry alone on one route and dataset: prints "seconds<TAB>peak RSS KiB".
ferry_run() { # src-kind dst-kind dataset
  local src=$1 dst=$2 set=$3
  n=$((n + 1))
  cat > "$work/c$n.yaml" <<EOF
apiVersion: ferry.dev/v1alpha1
kind: Connector
metadata: {name: bench, namespace: bench}
spec:
  source: {$(ferry_end "$src" "src$set" "")}
  destination: {$(ferry_end "$dst" dst "ferry-$n/")}
  syncMode: full
  compliance: {dataResidency: any}
  encryption: {keyRef: {secretRef: {name: kek}}}
EOF
  measure "$runner" run --connector "$work/c$n.yaml" --secrets-dir "$work/secrets" --audit-log "$work/audit"
}

rows=()
n=0
# Deletes what the measurements wrote and flushes it to disk, so that no run
# pays for the one before (dirty pages of a 1 GiB write cost seconds).
reset_destinations() {
  rm -rf "$work/s3root/dst/"* "$FERRY_SFTP_ROOT/dst/"*
  "$FERRY_PYTHON" - "$FERRY_AZURITE_ENDPOINT" "$dev_key" <<'PY'
import sys
from azure.storage.blob import ContainerClient
cc = ContainerClient(account_url=sys.argv[1], container_name="bench",
                     credential={"account_name": "devstoreaccount1", "account_key": sys.argv[2]})
for b in cc.list_blobs():
    cc.delete_blob(b.name)
PY
  sync
}

# The median of its arguments (of an even count: the mean of the middle two).
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { m = (NR + 1) / 2; printf "%.2f\n", (v[int(m)] + v[int(m + 0.5)]) / 2 }'
}
# The largest and the smallest of its arguments.
largest() { printf '%s\n' "$@" | sort -g | tail -1; }
smallest() { printf '%s\n' "$@" | sort -g | head -1; }

# Standalone throughput of one endpoint (rclone, the big object, from or to a
# RAM disk): prints seconds.
standalone_run() { # "s3 read" | "sftp write" ...
  local name=$1 kind=${1%% *} remote r
  case $kind in s3) remote="s3:srcbig" ;; sftp) remote="sftp:srcbig" ;; esac
  if [[ $name == *read ]]; then
    r=$(measure rclone --config "$work/rclone.conf" copy "$remote" "$shm/read-$kind")
    rm -rf "$shm/read-$kind"
  else
    case $kind in
      s3) remote="s3:dst/standalone" ;; azure) remote="azure:bench/standalone" ;; sftp) remote="sftp:dst/standalone" ;;
    esac
    r=$(measure rclone --config "$work/rclone.conf" copy "$shm/object.bin" "$remote")
    reset_destinations
  fi
  echo "${r%%$'\t'*}"
}

# Every standalone time, per endpoint, over all routes: "s3 read" -> "4.9 5.1 ...".
declare -A endpoint_times

bench_route() { # src-kind dst-kind dataset bytes
  local src=$1 dst=$2 set=$3 bytes=$4 r rep
  local src_remote dst_remote
  case $src in s3) src_remote="s3:src$set" ;; sftp) src_remote="sftp:src$set" ;; esac
  local -a plain_t=() crypt_t=() ferry_t=() read_t=() write_t=() plain_m=() crypt_m=() ferry_m=()
  # The three tools take turns, REPS times: a slow spell of the machine hits
  # all of them, and the median drops it. With the big object the route's two
  # endpoints are also measured on their own in each round, so that Ferry is
  # compared with what they delivered at the same time.
  for rep in $(seq 1 "$REPS"); do
    n=$((n + 1))
    case $dst in
      s3) dst_remote="s3:dst/rclone-$n"; crypt_remote="s3crypt:$n" ;;
      azure) dst_remote="azure:bench/rclone-$n"; crypt_remote="azurecrypt:$n" ;;
      sftp) dst_remote="sftp:dst/rclone-$n"; crypt_remote="sftpcrypt:$n" ;;
    esac
    echo "  $src -> $dst, $set, run $rep: rclone" >&2
    r=$(measure rclone --config "$work/rclone.conf" copy "$src_remote" "$dst_remote")
    echo "    $r" >&2
    plain_t+=("${r%%$'\t'*}"); plain_m+=("${r##*$'\t'}")
    reset_destinations
    echo "  $src -> $dst, $set, run $rep: rclone crypt" >&2
    r=$(measure rclone --config "$work/rclone.conf" copy "$src_remote" "$crypt_remote")
    echo "    $r" >&2
    crypt_t+=("${r%%$'\t'*}"); crypt_m+=("${r##*$'\t'}")
    reset_destinations
    echo "  $src -> $dst, $set, run $rep: ferry" >&2
    r=$(ferry_run "$src" "$dst" "$set")
    echo "    $r" >&2
    ferry_t+=("${r%%$'\t'*}"); ferry_m+=("${r##*$'\t'}")
    reset_destinations
    if [ "$set" = big ]; then
      echo "  $src read, $dst write, run $rep: rclone alone" >&2
      r=$(standalone_run "$src read"); read_t+=("$r"); endpoint_times["$src read"]+=" $r"
      r=$(standalone_run "$dst write"); write_t+=("$r"); endpoint_times["$dst write"]+=" $r"
      echo "    ${read_t[-1]} s, ${write_t[-1]} s" >&2
    fi
  done
  local plain_s crypt_s ferry_s plain_rss crypt_rss ferry_rss
  plain_s=$(median "${plain_t[@]}"); crypt_s=$(median "${crypt_t[@]}"); ferry_s=$(median "${ferry_t[@]}")
  plain_rss=$(largest "${plain_m[@]}"); crypt_rss=$(largest "${crypt_m[@]}"); ferry_rss=$(largest "${ferry_m[@]}")
  # Against the slower of the two endpoints on its own, measured in the same
  # rounds (big objects only: the standalone figures are for one big object).
  local ceiling="—"
  if [ "$set" = big ]; then
    local rd wr slower
    rd=$(mbps "$big_bytes" "$(median "${read_t[@]}")"); wr=$(mbps "$big_bytes" "$(median "${write_t[@]}")")
    slower=$((rd < wr ? rd : wr))
    ceiling="$(python3 -c "print(f'{$bytes / $ferry_s / 1e6 / $slower * 100:.0f}')")% of $slower"
  fi
  rows+=("| $src → $dst | $set | $(mbps "$bytes" "$plain_s") | $(mbps "$bytes" "$crypt_s") | **$(mbps "$bytes" "$ferry_s")** ($(mbps "$bytes" "$(largest "${ferry_t[@]}")")–$(mbps "$bytes" "$(smallest "${ferry_t[@]}")")) | $(python3 -c "print(f'{$plain_s / $ferry_s:.2f}')")× | $(python3 -c "print(f'{$crypt_s / $ferry_s:.2f}')")× | $ceiling | $((plain_rss / 1024)) / $((crypt_rss / 1024)) / **$((ferry_rss / 1024))** |")
}

big_bytes=$((BIG_MIB << 20))
small_bytes=$((SMALL * 65536))
# The big object on a RAM disk, for the endpoints' standalone runs.
shm=$(mktemp -d /dev/shm/ferry-bench.XXXXXX)
cp "$work/data/srcbig/object.bin" "$shm/"
echo "running..." >&2
# ROUTES="s3 sftp,sftp s3" runs a subset (the table then holds only those).
IFS=, read -r -a routes <<< "${ROUTES:-s3 sftp,s3 azure,sftp s3,s3 s3}"
for route in "${routes[@]}"; do
  set -- $route
  bench_route "$1" "$2" big "$big_bytes"
  bench_route "$1" "$2" small "$small_bytes"
done
rm -rf "$shm"
standalone=()
for name in "s3 read" "sftp read" "s3 write" "azure write" "sftp write"; do
  [ -n "${endpoint_times[$name]:-}" ] || continue
  # shellcheck disable=SC2086 # one argument per time
  standalone+=("| $name | $(mbps "$big_bytes" "$(median ${endpoint_times[$name]})") | $(echo ${endpoint_times[$name]} | wc -w) |")
done

# Memory does not grow with the object: Ferry alone, one RSS_MIB object per route.
RSS_MIB=${RSS_MIB:-4096}
memrows=()
if [ "$RSS_MIB" -gt 0 ]; then
  echo "memory with one ${RSS_MIB} MiB object..." >&2
  mkdir -p "$work/data/srchuge" "$work/s3root/srchuge"
  head -c $((RSS_MIB << 20)) /dev/urandom > "$work/data/srchuge/object.bin"
  rclone --config "$work/rclone.conf" copy "$work/data/srchuge" s3:srchuge
  cp -r "$work/data/srchuge" "$FERRY_SFTP_ROOT/"
  rm -f "$work/data/srchuge/object.bin"
  sync
  for route in "${routes[@]}"; do
    set -- $route
    echo "  $1 -> $2, ${RSS_MIB} MiB: ferry" >&2
    r=$(ferry_run "$1" "$2" huge)
    echo "    $r" >&2
    reset_destinations
    memrows+=("| $1 → $2 | $(mbps $((RSS_MIB << 20)) "${r%%$'\t'*}") | $((${r##*$'\t'} / 1024)) |")
  done
fi


cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
{
  echo "## Transfers: Ferry (encrypted) against rclone $(rclone version | head -1 | awk '{print $2}')"
  echo
  echo "Reproduce with \`bash docs/bench/transfer.sh $BIG_MIB $SMALL\`. Measured $(date -u +%Y-%m-%d) on $cpu, $(nproc) cores;"
  echo "servers on 127.0.0.1: s3s-fs 0.14.1 (S3), Azurite $(cat "$FERRY_CACHE/node/lib/node_modules/azurite/package.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])') (Azure Blob), OpenSSH (SFTP)."
  echo "Datasets: *big* = one ${BIG_MIB} MiB object, *small* = ${SMALL} objects of 64 KiB. rclone runs with its"
  echo "defaults (4 transfers); Ferry with its defaults (4 objects at once), encrypting everything,"
  echo "hashing plaintext and ciphertext, and writing its signed manifest. Each figure is the median of"
  echo "$REPS runs, the three tools taking turns, with the destinations emptied and flushed to disk between"
  echo "runs; Ferry's slowest and fastest run are in brackets; peak RSS is the largest of the runs. With"
  echo "the big object each round also measures the route's two endpoints on their own (rclone, from or to"
  echo "a RAM disk), and Ferry is set against the slower one's median from the same rounds."
  echo
  echo "| route | data | rclone MB/s | rclone crypt MB/s | Ferry MB/s (slowest–fastest) | Ferry vs rclone | Ferry vs crypt | Ferry vs slower endpoint alone (MB/s) | peak RSS MiB (rclone / crypt / Ferry) |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Within one S3 endpoint rclone copies server-side (CopyObject: no byte passes through it), so"
  echo "the plain s3 → s3 column is not a like-for-like baseline; its crypt column is."
  echo
  if [ ${#memrows[@]} -gt 0 ]; then
    echo "Peak memory with one ${RSS_MIB} MiB object (Ferry alone, same servers):"
    echo
    echo "| route | Ferry MB/s | peak RSS MiB |"
    echo "| --- | ---: | ---: |"
    printf '%s\n' "${memrows[@]}"
    echo
  fi
  echo "Standalone throughput of each endpoint (rclone, one ${BIG_MIB} MiB object, from or to a RAM disk;"
  echo "median of every round that measured it):"
  echo
  echo "| endpoint | MB/s | runs |"
  echo "| --- | ---: | ---: |"
  printf '%s\n' "${standalone[@]}"
} > "$out"
bash docs/bench/assemble.sh
