#!/usr/bin/env bash
# Build .gpu-bundle/ here (git-ignored): what benchmarks/gpu.sh needs on a lent GPU machine and cannot
# install there (no network). Wheels for its Python (3.12, x86_64 manylinux) of the packages its image
# lacks, at the versions of our .venv, and SeaweedFS's weed binary (xz: 150 MB -> ~34 MB). The device
# tool carries 64 MiB with the repo, so the bundle is checked against 60 MiB.
#
#   bash benchmarks/gpu_bundle.sh        # then: device run, carry [".gpu-bundle"], "bash benchmarks/gpu.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
BUNDLE=.gpu-bundle
PACKAGES="boto3 botocore s3transfer jmespath cryptography cffi pycparser"
mkdir -p "$BUNDLE/wheels"
pins=$("$PY" -m pip list --format=freeze 2>/dev/null | grep -iE "^($(echo "$PACKAGES" | tr ' ' '|'))==" || true)
[ "$(echo "$pins" | wc -l)" -eq "$(echo "$PACKAGES" | wc -w)" ] || { echo "not all of $PACKAGES in .venv" >&2; exit 1; }
# shellcheck disable=SC2086 - one argument per pin
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$BUNDLE/wheels" $pins
weed=$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")/weed
if [ ! -f "$BUNDLE/weed.xz" ] || [ "$weed" -nt "$BUNDLE/weed.xz" ]; then
  xz -T0 -6 -c "$weed" > "$BUNDLE/weed.xz.tmp" && mv "$BUNDLE/weed.xz.tmp" "$BUNDLE/weed.xz"
fi
size=$(du -sm "$BUNDLE" | cut -f1)
echo "$BUNDLE: ${size} MiB ($(ls "$BUNDLE/wheels" | wc -l) wheels + weed.xz)"
[ "$size" -le 60 ] || { echo "$BUNDLE is over 60 MiB: it will not travel with the repo (64 MiB)" >&2; exit 1; }
