#!/usr/bin/env bash
# Packages the chart as a release: a versioned .tgz whose image references are
# the digests of the images this commit built (images/build.sh's `digests`).
#
#   charts/package.sh --digests DIR/digests --out DIR
#
# The chart's version and appVersion must be the workspace's version: one
# number names the binaries, the images and the chart.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
digests="" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --digests) digests=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: charts/package.sh --digests FILE --out DIR" >&2; exit 2 ;;
  esac
done
[ -n "$digests" ] && [ -n "$out" ] || { echo "usage: charts/package.sh --digests FILE --out DIR" >&2; exit 2; }
HELM=${HELM:-helm}

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
chart_version=$(sed -n 's/^version: //p' charts/ferry/Chart.yaml)
app_version=$(sed -n 's/^appVersion: "\(.*\)"/\1/p' charts/ferry/Chart.yaml)
[ "$chart_version" = "$version" ] && [ "$app_version" = "$version" ] \
  || { echo "Chart.yaml says $chart_version/$app_version, Cargo.toml $version" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -r charts/ferry "$stage/ferry"
python3 - "$digests" "$stage/ferry/values.yaml" <<'PY'
import re, sys
digests = dict(line.split() for line in open(sys.argv[1]) if line.strip())
path = sys.argv[2]
text = open(path).read()
for image, section in (("ferry-operator", "operator"), ("job-runner", "runner")):
    digest = digests[image]
    assert re.fullmatch(r"sha256:[a-f0-9]{64}", digest), digest
    # The first `digest: ""` after the section's heading is its image's.
    start = re.search(rf"^{section}:\n", text, re.M).end()
    at = text.index('digest: ""', start)
    text = text[:at] + f'digest: "{digest}"' + text[at + len('digest: ""'):]
open(path, "w").write(text)
PY
"$HELM" lint "$stage/ferry" >/dev/null
mkdir -p "$out"
"$HELM" package "$stage/ferry" -d "$out" >/dev/null
echo "$out/ferry-$version.tgz"
