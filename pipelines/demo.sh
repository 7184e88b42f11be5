#!/usr/bin/env bash
# The demo: the whole chain on this machine, CPU only. Run it with `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
export RADIMAGENET_HOME="${RADIMAGENET_HOME:-$PWD/.radimagenet}"
WORK="$RADIMAGENET_HOME/demo"
RUN="demo-$(date +%Y%m%d-%H%M%S)"
# OBJECTIVE=dino|mae (`make demo OBJECTIVE=dino`): also pretrain self-supervised on an unlabelled archive
OBJECTIVE="${OBJECTIVE:-}"
case "$OBJECTIVE" in ""|dino|mae) ;; *) echo "OBJECTIVE must be dino or mae, got '$OBJECTIVE'" >&2; exit 2;; esac
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
if [[ -n "$OBJECTIVE" ]]; then  # an archive without labels: DICOM files and their patients only
  radimagenet synth --out "$WORK/archive" --images 600 --seed 2 --unlabeled
fi

step "3/7 ingest: decode, de-identify, split by patient, shard to S3"
radimagenet ingest "$WORK/pretrain" --labels "$WORK/pretrain/labels.csv" \
  --out "s3://radimagenet/datasets/$RUN/pretrain" --image-size 96 --shard-size 1MB --workers 2
radimagenet ingest "$WORK/downstream" --labels "$WORK/downstream/labels.csv" --split 0.5,0.1,0.4 \
  --out "s3://radimagenet/datasets/$RUN/downstream" --image-size 96 --shard-size 1MB --workers 2
if [[ -n "$OBJECTIVE" ]]; then
  radimagenet ingest "$WORK/archive/images" --unlabeled \
    --out "s3://radimagenet/datasets/$RUN/archive" --image-size 96 --shard-size 1MB --workers 2
fi

step "4/7 inspect and verify"
radimagenet dataset inspect "s3://radimagenet/datasets/$RUN/pretrain"
radimagenet dataset verify "s3://radimagenet/datasets/$RUN/pretrain"
radimagenet dataset inspect "s3://radimagenet/datasets/$RUN/downstream"

step "5/7 pretrain a small backbone on 2 CPU Ray Train workers, register it in MLflow"
radimagenet pretrain --config pipelines/demo-pretrain.yaml \
  data.manifest="s3://radimagenet/datasets/$RUN/pretrain/manifest.json" tracking.run_name="$RUN"
radimagenet registry list radimagenet-demo
radimagenet registry promote radimagenet-demo candidate --alias champion
if [[ -n "$OBJECTIVE" ]]; then
  step "5b/7 pretrain the same backbone self-supervised ($OBJECTIVE) on the unlabelled archive"
  radimagenet pretrain --config pipelines/demo-pretrain.yaml objective="$OBJECTIVE" \
    data.manifest="s3://radimagenet/datasets/$RUN/archive/manifest.json" tracking.run_name="$RUN-$OBJECTIVE" \
    registry.name="radimagenet-demo-$OBJECTIVE" train.epochs=10 \
    ssl.out_dim=1024 ssl.hidden_dim=512 ssl.bottleneck_dim=128 ssl.local_crops=4
  radimagenet registry show "radimagenet-demo-$OBJECTIVE@candidate" | head -8
fi

step "6/7 fine-tune the pretrained backbone and a scratch model where labels are scarce (10% of the training patients)"
DOWN="s3://radimagenet/datasets/$RUN/downstream"
SCARCE=(data.label_fraction=0.1 train.batch_size=8 train.epochs=8)
radimagenet finetune --config pipelines/demo-finetune.yaml backbone=radimagenet-demo@champion \
  data.manifest="$DOWN" tracking.run_name="$RUN-pretrained" "${SCARCE[@]}" | tee "$WORK/pretrained.txt"
radimagenet finetune --config pipelines/demo-finetune.yaml init=scratch backbone= \
  data.manifest="$DOWN" tracking.run_name="$RUN-scratch" "${SCARCE[@]}" | tee "$WORK/scratch.txt"
if [[ -n "$OBJECTIVE" ]]; then
  radimagenet finetune --config pipelines/demo-finetune.yaml backbone="radimagenet-demo-$OBJECTIVE@candidate" \
    data.manifest="$DOWN" tracking.run_name="$RUN-$OBJECTIVE" "${SCARCE[@]}" | tee "$WORK/$OBJECTIVE.txt"
fi
echo
echo "pretrained backbone: $(grep -o 'test AUC [^,]*' "$WORK/pretrained.txt" | tail -1)"
echo "scratch:             $(grep -o 'test AUC [^,]*' "$WORK/scratch.txt" | tail -1)"
if [[ -n "$OBJECTIVE" ]]; then
  echo "$OBJECTIVE (no labels): $(grep -o 'test AUC [^,]*' "$WORK/$OBJECTIVE.txt" | tail -1)"
fi
echo "(one seed each, 10% of the labels; over seeds, fractions and inits with paired tests: radimagenet sweep --help)"

step "7/7 done"
echo "MLflow UI:     $MLFLOW_TRACKING_URI  (user $MLFLOW_TRACKING_USERNAME; password: radimagenet stack env)"
echo "Ray dashboard: $RAY_ADDRESS"
echo "datasets:      s3://radimagenet/datasets/$RUN/{pretrain,downstream}"
