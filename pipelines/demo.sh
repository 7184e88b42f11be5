#!/usr/bin/env bash
# The demo: the whole chain on this machine, CPU only. Run it with `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
export RADIMAGENET_HOME="${RADIMAGENET_HOME:-$PWD/.radimagenet}"
WORK="$RADIMAGENET_HOME/demo"
RUN="demo-$(date +%Y%m%d-%H%M%S)"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/5 local stack: S3 (SeaweedFS), MLflow, Ray head"
radimagenet stack up
eval "$(radimagenet stack env)"

step "2/5 synthetic corpus: DICOM key images with planted PHI, duplicates, a blank and a truncated file"
rm -rf "$WORK" && mkdir -p "$WORK"
radimagenet synth --out "$WORK/pretrain" --images 600 --seed 0
radimagenet synth --out "$WORK/downstream" --images 300 --seed 1 --task downstream

step "3/5 ingest: decode, de-identify, split by patient, shard to S3"
radimagenet ingest "$WORK/pretrain" --labels "$WORK/pretrain/labels.csv" \
  --out "s3://radimagenet/datasets/$RUN/pretrain" --image-size 96 --shard-size 1MB --workers 2
radimagenet ingest "$WORK/downstream" --labels "$WORK/downstream/labels.csv" \
  --out "s3://radimagenet/datasets/$RUN/downstream" --image-size 96 --shard-size 1MB --workers 2

step "4/5 inspect and verify"
radimagenet dataset inspect "s3://radimagenet/datasets/$RUN/pretrain"
radimagenet dataset verify "s3://radimagenet/datasets/$RUN/pretrain"
radimagenet dataset inspect "s3://radimagenet/datasets/$RUN/downstream"

step "5/5 done"
echo "MLflow UI:     $MLFLOW_TRACKING_URI"
echo "Ray dashboard: $RAY_ADDRESS"
echo "datasets:      s3://radimagenet/datasets/$RUN/{pretrain,downstream}"
