#!/usr/bin/env bash
# The CUDA figures in docs/benchmarks.md and docs/loadtest.md: run on a machine with an NVIDIA GPU
# and PyTorch with CUDA. Builds an SD 2.1-shaped pipeline with random weights (no hub), then runs
# the predictor benchmark and the breaking-point load test against the real CUDA path.
#   WHEELS=dir-of-wheels OUT=results-dir bash bench/gpu.sh [bench|loadtest|all]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
if [ -n "${WHEELS:-}" ]; then  # offline machine: install the few missing packages from carried wheels
  # --no-deps: kserve's pins (e.g. psutil<6) would refuse the image's newer packages, which work.
  python3 -m pip install -q --no-index --no-deps "$WHEELS"/*.whl
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "from importlib.metadata import version as v; print(*(f'{p} {v(p)}' for p in ('torch', 'diffusers', 'transformers', 'kserve')))" | tee -a "$OUT/gpu.txt"
MODEL=${MODEL:-/tmp/sd21-random}
[ -f "$MODEL/model_index.json" ] || python3 -m loadtest.realsize "$MODEL" --device cuda
what=${1:-all}
if [ "$what" = bench ] || [ "$what" = all ]; then
  python3 -m bench --device cuda --model_dir "$MODEL" --height 512 --width 512 --steps 25 \
    --repeats 8 --requests 32 --ready_steps 25 --ready_seconds 6 --out "$OUT/bench" 2>&1 | tail -40
fi
