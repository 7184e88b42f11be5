#!/usr/bin/env bash
# The one prepared command for a lent GPU machine: ResNet-50 bf16 images/s from synthetic tensors and from
# the real loader streaming S3, and the loader's CPU cores per GPU (benchmarks/gpu.py says how).
#
#   bash benchmarks/gpu.sh        # writes gpu.json + gpu.txt to $OUT (unset: ./gpu-results); ~3 min on an H100
#
# A lent machine gets a copy of the repo and nothing else: no network, no registry, so nothing can be
# installed there. Its python3 has PyTorch, timm, numpy, Pillow, psutil, xxhash; it lacks boto3 (and
# botocore, s3transfer, jmespath), cryptography (the stack's certificates) and SeaweedFS. Those travel in
# .gpu-bundle/ (git-ignored), built here by `bash benchmarks/gpu_bundle.sh` (~56 MiB: the device tool
# carries 64 MiB): call the device with carry [".gpu-bundle"] and command "bash benchmarks/gpu.sh".
# Where the project's .venv works (a GPU machine of your own), it is used and no bundle is needed.
# Without a GPU the same run happens at a tiny size on CPU and says that it found no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-results}"
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
say() { echo "[gpu.sh] $*" >&2; }

VENV_PY="${RADIMAGENET_GPU_PYTHON:-.venv/bin/python}"  # an interpreter with the project installed
if [ -x "$VENV_PY" ] && "$VENV_PY" -c "import radimagenet, torch, boto3, cryptography" 2>/dev/null; then
  PY=$VENV_PY
  say "python: $PY (the project installed)"
else
  PY=python3
  export PYTHONPATH="$PWD/platform${PYTHONPATH:+:$PYTHONPATH}"
  if [ -d .gpu-bundle/wheels ]; then  # no network: the packages this machine lacks, carried as wheels
    site=/tmp/rin-gpu-site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      .gpu-bundle/wheels/*.whl
    export PYTHONPATH="$PYTHONPATH:$site"
  fi
  say "python: $(command -v "$PY") with platform/ on PYTHONPATH (no .venv here)"
  if ! "$PY" -c "import torch, timm, boto3, cryptography, psutil, xxhash" 2>/dev/null; then
    say "missing Python packages, and nothing can be installed on a lent machine: build .gpu-bundle here"
    say "with 'bash benchmarks/gpu_bundle.sh' and carry it; what is missing:"
    "$PY" -c "import torch, timm, boto3, cryptography, psutil, xxhash" || true
    exit 2
  fi
fi

# the S3 server (SeaweedFS): the venv's, PATH's, else the bundle's (xz-compressed: it is 150 MB)
if [ -z "${AWS_ENDPOINT_URL:-}" ] && [ ! -x "$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")/weed" ] \
   && ! command -v weed >/dev/null; then
  if [ -f .gpu-bundle/weed.xz ]; then
    mkdir -p /tmp/rin-gpu-bin
    "$PY" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
      .gpu-bundle/weed.xz /tmp/rin-gpu-bin/weed
    chmod +x /tmp/rin-gpu-bin/weed
    export PATH="/tmp/rin-gpu-bin:$PATH"
  else
    say "no SeaweedFS (weed) here and no .gpu-bundle/weed.xz: build the bundle with benchmarks/gpu_bundle.sh"
    exit 2
  fi
fi

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
else
  say "no nvidia-smi on this machine (gpu.py says whether torch sees a GPU)"
fi
set -o pipefail
"$PY" benchmarks/gpu.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu.log"
