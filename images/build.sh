#!/usr/bin/env bash
# Builds Ferry's two container images without a Docker daemon (buildah, vfs
# storage, chroot isolation) from this checkout's static binaries, with an SBOM
# each. Outputs, under --out (default $FERRY_CACHE/images/<profile>):
#
#   job-runner.oci.tar, ferry-operator.oci.tar   OCI archives (skopeo copies them anywhere)
#   job-runner.cdx.json, ferry-operator.cdx.json CycloneDX SBOMs of what each binary links
#   digests                                       "<image> <manifest digest>", one per line
#
#   images/build.sh [--profile test|release] [--out DIR]
#
# `make image` builds the release images; the test command builds the same
# Containerfile from its test-profile binaries (the release build of the whole
# dependency set would double CI's build time) and runs them (tests/images).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
export FERRY_CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FERRY_CACHE/target}
# Incremental compilation splits code differently from build to build: the
# images' binaries are built without it, as the test command builds them.
export CARGO_INCREMENTAL=0

profile=release
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: images/build.sh [--profile test|release] [--out DIR]" >&2; exit 2 ;;
  esac
done
out=${out:-$FERRY_CACHE/images/$profile}

# Mozilla's CA roots, as certifi ships them: the wheel is pinned by its hash.
CERTIFI_VERSION=2026.10.19.post1
CERTIFI_SHA256=1324c476b4811eff41a8bc2122cd0bbd4d9c7234c725446d99ab1612b3a7fdd2
# 2000-01-01T00:00:00Z: every timestamp in the images, so that two builds of one
# commit give one digest.
EPOCH=946684800

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] FAILED: %s\n' "$*" >&2; exit 1; }

for tool in buildah skopeo cargo-cyclonedx; do
  command -v "$tool" >/dev/null || [ -x "$FERRY_CACHE/tools/bin/$tool" ] \
    || die "$tool is missing: bash tests/bootstrap.sh install"
done
export PATH="$FERRY_CACHE/tools/bin:$PATH"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
host=$(rustc -vV | sed -n 's/^host: //p')
dir=$( [ "$profile" = test ] && echo debug || echo "$profile")
bins="$CARGO_TARGET_DIR/$host/$dir"

log "building the binaries ($profile profile, static, $host)"
if [ "$profile" = test ]; then
  # The binaries `cargo test` builds for the integration tests (the test
  # command's own): the same features, so nothing is compiled twice.
  cargo test -q --locked --workspace --no-run
else
  cargo build --locked --profile "$profile" -p ferry-operator -p ferry-job-runner --bins
fi

mkdir -p "$out"
ctx=$(mktemp -d)
storage=$(mktemp -d)
trap 'chmod -R u+w "$storage" 2>/dev/null; rm -rf "$ctx" "$storage"' EXIT

for bin in ferry-operator job-runner; do
  # A static executable: no program interpreter, no shared library.
  if readelf -l "$bins/$bin" | grep -q 'INTERP' || readelf -d "$bins/$bin" | grep -q '(NEEDED)'; then
    die "$bins/$bin is not a static executable"
  fi
  install -m 0555 "$bins/$bin" "$ctx/$bin"
done

wheel_dir="$FERRY_CACHE/images/certifi-$CERTIFI_VERSION"
if [ ! -f "$wheel_dir/cacert.pem" ]; then
  mkdir -p "$wheel_dir"
  echo "certifi==$CERTIFI_VERSION --hash=sha256:$CERTIFI_SHA256" > "$wheel_dir/requirements.txt"
  "${FERRY_PYTHON:-python3}" -m pip download -q --disable-pip-version-check --no-deps --require-hashes \
    -r "$wheel_dir/requirements.txt" -d "$wheel_dir" || die "pip download certifi"
  "${FERRY_PYTHON:-python3}" -c 'import sys, zipfile, glob; sys.stdout.buffer.write(zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0]).read("certifi/cacert.pem"))' \
    "$wheel_dir" > "$wheel_dir/cacert.pem.tmp"
  mv "$wheel_dir/cacert.pem.tmp" "$wheel_dir/cacert.pem"
fi
install -m 0444 "$wheel_dir/cacert.pem" "$ctx/ca-certificates.crt"
touch -d "@$EPOCH" "$ctx"/*

bah=(buildah --root "$storage/root" --runroot "$storage/run" --storage-driver vfs)
: > "$out/digests.tmp"
for pair in runner:job-runner operator:ferry-operator; do
  target=${pair%%:*} name=${pair#*:}
  ref="localhost/ferry/$name:$version"
  log "building $ref (target $target)"
  "${bah[@]}" build -q --isolation chroot --timestamp "$EPOCH" --layers=false \
    --build-arg "VERSION=$version" --target "$target" -f images/Containerfile -t "$ref" "$ctx" >/dev/null \
    || die "buildah build $target"
  rm -f "$out/$name.oci.tar"
  "${bah[@]}" push -q "$ref" "oci-archive:$out/$name.oci.tar:$version" || die "buildah push $name"
  digest=$(skopeo inspect --format '{{.Digest}}' "oci-archive:$out/$name.oci.tar") || die "skopeo inspect $name"
  echo "$name $digest" >> "$out/digests.tmp"
  log "$name $digest ($(du -k "$out/$name.oci.tar" | cut -f1) KiB)"
done
mv "$out/digests.tmp" "$out/digests"

# SBOMs: the crates each binary links, resolved from Cargo.lock for this target.
# cargo cyclonedx writes one file into each member's folder: moved out at once.
log "SBOMs (CycloneDX, from Cargo.lock)"
sbom=ferry-sbom-$$
trap 'chmod -R u+w "$storage" 2>/dev/null; rm -rf "$ctx" "$storage" "$ROOT"/*/"$sbom.json"' EXIT
SOURCE_DATE_EPOCH=$EPOCH cargo cyclonedx -q --format json --spec-version 1.5 --target "$host" \
  --override-filename "$sbom" >/dev/null || die "cargo cyclonedx"
mv "$ROOT/operator/$sbom.json" "$out/ferry-operator.cdx.json"
mv "$ROOT/job-runner/$sbom.json" "$out/job-runner.cdx.json"
log "images in $out"
