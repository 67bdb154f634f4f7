#!/usr/bin/env bash
# The cost of keeping the KEK in a KMS: Ferry with its KEK in a Secret against
# Ferry with its KEK in OpenBao Transit, and rclone on the same tree, in one
# run: many small objects, local folder to local folder (so that the key calls
# are what differs), and the number of Transit calls each run makes, counted
# in OpenBao's audit log. Writes docs/bench/kms.md, then docs/benchmarks.md.
#   bash docs/bench/kms.sh [COUNT] [SIZE_KIB]
# REPS (default 5, odd) is how many times each measurement runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export FERRY_CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FERRY_CACHE/target}
COUNT=${1:-1000}
KIB=${2:-4}
REPS=${REPS:-5}
out=docs/bench/kms.md
work=$(mktemp -d /var/tmp/ferry-kms-bench.XXXXXX)
cleanup() {
  bash tests/bootstrap.sh stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "installing and building..." >&2
bash tests/bootstrap.sh install
cargo build -q --locked --release -p ferry-job-runner --bin job-runner
runner="$CARGO_TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release/job-runner"
bash tests/bootstrap.sh start >/dev/null
# shellcheck disable=SC1091
source "$FERRY_CACHE/services/env"

echo "making data: ${COUNT} x ${KIB} KiB..." >&2
mkdir -p "$work/src" "$work/secrets/kek"
python3 - "$work/src" "$COUNT" "$KIB" <<'PY'
import os, sys
d, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    with open(os.path.join(d, f"part-{i:05}.bin"), "wb") as f:
        f.write(os.urandom(kib * 1024))
PY
head -c 32 /dev/urandom > "$work/secrets/kek/kek"

# OpenBao as the platform team sets it up: a Transit key, a JWT auth method
# trusting an issuer key, a role whose policy allows the run's Transit calls.
bao() {
  curl -sf -X "$1" -H "X-Vault-Token: $FERRY_BAO_ROOT_TOKEN" ${3:+--data "$3"} "$FERRY_BAO_ADDR/v1/$2" >/dev/null
}
"$FERRY_PYTHON" - "$work" <<'PY'
import base64, json, sys, time
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization
d = sys.argv[1]
key = Ed25519PrivateKey.generate()
pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
open(f"{d}/issuer.pub", "wb").write(pem)
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
claims = {"iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:bench:ferry-run-r",
          "aud": ["vault"], "iat": now, "nbf": now, "exp": now + 3600}
signed = b64(json.dumps({"alg": "EdDSA", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
open(f"{d}/vault-token", "w").write(signed + "." + b64(key.sign(signed.encode())))
PY
suffix=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
mount=transit-bench-$suffix
jwt=jwt-bench-$suffix
bao POST "sys/mounts/$mount" '{"type":"transit"}'
bao POST "$mount/keys/bench" '{}'
bao POST "sys/auth/$jwt" '{"type":"jwt"}'
bao POST "auth/$jwt/config" "$(python3 -c 'import json,sys; print(json.dumps({"jwt_validation_pubkeys": [open(sys.argv[1]).read()], "bound_issuer": "https://kubernetes.default.svc"}))' "$work/issuer.pub")"
bao PUT "sys/policies/acl/$mount" "$(python3 -c 'import json,sys; m=sys.argv[1]; print(json.dumps({"policy": f"path \"{m}/datakey/plaintext/bench\" {{ capabilities = [\"update\"] }}\npath \"{m}/decrypt/bench\" {{ capabilities = [\"update\"] }}"}))' "$mount")"
bao POST "auth/$jwt/role/bench" "{\"role_type\":\"jwt\",\"bound_audiences\":[\"vault\"],\"user_claim\":\"sub\",\"token_policies\":[\"$mount\"],\"token_ttl\":\"1h\"}"
reader=$(curl -sf -X POST -H "X-Vault-Token: $FERRY_BAO_ROOT_TOKEN" \
  --data "{\"policies\":[\"$mount\"],\"no_default_policy\":true,\"ttl\":\"1h\"}" \
  "$FERRY_BAO_ADDR/v1/auth/token/create" | python3 -c 'import json,sys; print(json.load(sys.stdin)["auth"]["client_token"])')

for kek in secret transit; do
  case $kek in
    secret) enc='{keyRef: {secretRef: {name: kek}}}' ;;
    transit) enc="{kms: {vaultTransit: {mount: $mount, key: bench}}}" ;;
  esac
  cat > "$work/$kek.yaml" <<EOF
apiVersion: ferry.dev/v1alpha1
kind: Connector
metadata: {name: $kek, namespace: bench}
spec:
  source: {local: {path: src}}
  destination: {local: {path: dst-$kek}}
  compliance: {dataResidency: any}
  encryption: $enc
EOF
done

# Transit calls so far, by operation.
calls() {
  "$FERRY_PYTHON" - "$FERRY_BAO_AUDIT_LOG" "$mount" "$1" <<'PY'
import json, sys
log, mount, op = sys.argv[1:]
n = 0
for line in open(log):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("type") == "response" and e["request"]["path"] == f"{mount}/{op}/bench":
        n += 1
print(n)
PY
}

# Runs "$@" in $work, which must succeed; sets S (seconds) and M (peak RSS, MiB).
measure() {
  local t0 t1
  t0=$(date +%s.%N)
  if ! (cd "$work" && /usr/bin/time -f %M -o "$work/rss" "$@" >/dev/null 2>"$work/err"); then
    echo "failed: $*" >&2; cat "$work/err" >&2; exit 1
  fi
  t1=$(date +%s.%N)
  S=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
  M=$(python3 -c "print(f'{int(open(\"$work/rss\").read().split()[-1]) / 1024:.0f}')")
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
largest() { printf '%s\n' "$@" | sort -g | tail -1; }

vault_flags=(--vault-addr "$FERRY_BAO_ADDR" --vault-role bench --vault-auth-mount "$jwt" --vault-token-file vault-token)
declare -A t rss n_datakey n_decrypt
for what in rclone-full secret-full transit-full secret-again transit-again secret-verify transit-verify; do
  t[$what]=""; rss[$what]=""
done
echo "measuring, $REPS rounds..." >&2
for round in $(seq 1 "$REPS"); do
  rm -rf "$work/dst-rclone" "$work/dst-secret" "$work/dst-transit"
  sync
  measure rclone copy --config /dev/null src dst-rclone
  t[rclone-full]+=" $S"; rss[rclone-full]+=" $M"
  for kek in secret transit; do
    before_dk=$(calls datakey/plaintext); before_de=$(calls decrypt)
    measure "$runner" "${vault_flags[@]}" run --connector "$kek.yaml" --secrets-dir secrets
    t[$kek-full]+=" $S"; rss[$kek-full]+=" $M"
    measure "$runner" "${vault_flags[@]}" run --connector "$kek.yaml" --secrets-dir secrets
    t[$kek-again]+=" $S"; rss[$kek-again]+=" $M"
    if [ "$kek" = secret ]; then
      measure "$runner" verify --kek secrets/kek/kek --dir dst-secret --deep
    else
      mid_dk=$(calls datakey/plaintext); mid_de=$(calls decrypt)
      measure env VAULT_ADDR="$FERRY_BAO_ADDR" VAULT_TOKEN="$reader" \
        "$runner" verify --kms "vault-transit:$mount/bench" --dir dst-transit --deep
      if [ "$round" = 1 ]; then
        n_datakey[runs]=$((mid_dk - before_dk)); n_decrypt[runs]=$((mid_de - before_de))
        n_datakey[verify]=$(( $(calls datakey/plaintext) - mid_dk )); n_decrypt[verify]=$(( $(calls decrypt) - mid_de ))
      fi
    fi
    t[$kek-verify]+=" $S"; rss[$kek-verify]+=" $M"
  done
done
objects=$(find "$work/dst-transit" -type f -not -path '*/.ferry/*' | wc -l)
[ "$objects" = "$COUNT" ] || { echo "expected $COUNT objects at the destination, found $objects" >&2; exit 1; }

row() { echo "| $1 | $(median ${t[$2]}) | $(largest ${rss[$2]}) | $3 |"; }
{
  echo "## Key-encryption key in a KMS: Secret against Vault Transit"
  echo
  echo "Reproduce with \`bash docs/bench/kms.sh $COUNT $KIB\`. Measured $(date -u +%Y-%m-%d) on"
  echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores;"
  echo "OpenBao $("$FERRY_CACHE/venv/bin/bao" version | awk '{print $2}') (\`bao server -dev\`) on 127.0.0.1, its file audit device on."
  echo "$COUNT objects of $KIB KiB, local folder to local folder, release build. Each time is the median"
  echo "of $REPS rounds (the three copies taking turns), in seconds; peak RSS is the largest, in MiB."
  echo "Transit calls are counted in OpenBao's audit log: per run (first and unchanged run together), and"
  echo "for one \`verify --deep\` with a token that may only decrypt."
  echo
  echo "| what | seconds | peak RSS MiB | Transit calls |"
  echo "| --- | ---: | ---: | --- |"
  row "rclone copy (reference, no encryption)" rclone-full "—"
  row "Ferry, KEK in a Secret: full run" secret-full "0"
  row "Ferry, KEK in Transit: full run" transit-full "1 data key"
  row "Ferry, KEK in a Secret: unchanged run" secret-again "0"
  row "Ferry, KEK in Transit: unchanged run" transit-again "1 data key, 1 decrypt"
  row "\`verify --deep\`, KEK file" secret-verify "0"
  row "\`verify --deep\`, Transit decrypt rights" transit-verify "${n_datakey[verify]} data key, ${n_decrypt[verify]} decrypt"
  echo
  echo "Measured calls for the two runs of round 1: ${n_datakey[runs]} data key(s), ${n_decrypt[runs]} decrypt(s)."
  echo "A run asks Transit for one data key (its run key) whatever its number of objects, and"
  echo "decrypts the run key of the manifest it builds on; a reader decrypts each run key it meets"
  echo "once (one per run, not per object)."
} > "$out"
# The measured calls must be what the table states.
[ "${n_datakey[runs]}" = 2 ] && [ "${n_decrypt[runs]}" = 1 ] || { echo "unexpected call counts: ${n_datakey[runs]} / ${n_decrypt[runs]}" >&2; exit 1; }
echo "wrote $out" >&2
bash docs/bench/assemble.sh
