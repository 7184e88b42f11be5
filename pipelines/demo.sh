#!/usr/bin/env bash
# The demo: the whole chain on this machine, CPU only. Run it with `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
export RADIMAGENET_HOME="${RADIMAGENET_HOME:-$PWD/.radimagenet}"
WORK="$RADIMAGENET_HOME/demo"
RUN="demo-$(date +%Y%m%d-%H%M%S)"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/7 local stack: S3 (SeaweedFS), MLflow, Ray head"
radimagenet stack up
eval "$(radimagenet stack env)"

step "2/7 synthetic corpus: DICOM key images with planted PHI, duplicates, a blank and a truncated file"
rm -rf "$WORK" && mkdir -p "$WORK"
radimagenet synth --out "$WORK/pretrain" --images 600 --seed 0
# 800 images = ~200 patients, split 50/10/40 by patient: a test set of ~80 patients, so that a
# difference between initialisations can stand out of its patient-level interval
radimagenet synth --out "$WORK/downstream" --images 800 --seed 1 --task downstream

step "3/7 ingest: decode, de-identify, split by patient, shard to S3"
radimagenet ingest "$WORK/pretrain" --labels "$WORK/pretrain/labels.csv" \
  --out "s3://radimagenet/datasets/$RUN/pretrain" --image-size 96 --shard-size 1MB --workers 2
radimagenet ingest "$WORK/downstream" --labels "$WORK/downstream/labels.csv" --split 0.5,0.1,0.4 \
  --out "s3://radimagenet/datasets/$RUN/downstream" --image-size 96 --shard-size 1MB --workers 2

step "4/7 inspect and verify"
radimagenet dataset inspect "s3://radimagenet/datasets/$RUN/pretrain"
radimagenet dataset verify "s3://radimagenet/datasets/$RUN/pretrain"
radimagenet dataset inspect "s3://radimagenet/datasets/$RUN/downstream"

step "5/7 pretrain a small backbone on 2 CPU Ray Train workers, register it in MLflow"
radimagenet pretrain --config pipelines/demo-pretrain.yaml \
  data.manifest="s3://radimagenet/datasets/$RUN/pretrain/manifest.json" tracking.run_name="$RUN"
radimagenet registry list radimagenet-demo
radimagenet registry promote radimagenet-demo candidate --alias champion

step "6/7 fine-tune the pretrained backbone and a scratch model where labels are scarce (10% of the training patients)"
DOWN="s3://radimagenet/datasets/$RUN/downstream"
SCARCE=(data.label_fraction=0.1 train.batch_size=8 train.epochs=8)
radimagenet finetune --config pipelines/demo-finetune.yaml backbone=radimagenet-demo@champion \
  data.manifest="$DOWN" tracking.run_name="$RUN-pretrained" "${SCARCE[@]}" | tee "$WORK/pretrained.txt"
radimagenet finetune --config pipelines/demo-finetune.yaml init=scratch backbone= \
  data.manifest="$DOWN" tracking.run_name="$RUN-scratch" "${SCARCE[@]}" | tee "$WORK/scratch.txt"
echo
echo "pretrained backbone: $(grep -o 'test AUC [^,]*' "$WORK/pretrained.txt" | tail -1)"
echo "scratch:             $(grep -o 'test AUC [^,]*' "$WORK/scratch.txt" | tail -1)"
echo "(one seed each, 10% of the labels; over seeds, fractions and inits with paired tests: radimagenet sweep --help)"

step "7/7 done"
echo "MLflow UI:     $MLFLOW_TRACKING_URI  (user $MLFLOW_TRACKING_USERNAME; password: radimagenet stack env)"
echo "Ray dashboard: $RAY_ADDRESS"
echo "datasets:      s3://radimagenet/datasets/$RUN/{pretrain,downstream}"
