#!/usr/bin/env bash
# The GPU path, as one short script for a lent device (README, "Speed"):
# bench/speed.py on CUDA (time to error vs a plain loop; conditions scaling) and a short
# `python train.py trainer=gpu` run. Needs hydra-core, omegaconf, antlr4, pysindy wheels in .whl/
# when the machine lacks them.
set -euo pipefail
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export WANDB_MODE=disabled PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 train.py trainer=gpu trainer.max_epochs=30 hydra.run.dir="$OUT/run" 2>&1 | tail -4
python3 bench/speed.py --device cuda --skip cli --max-seconds "${MAX_SECONDS:-240}" 2>&1 | tee "$OUT/speed_cuda.txt"
