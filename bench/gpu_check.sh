#!/usr/bin/env bash
# Where the GPU pays, in one short booking of a GPU (under 10 minutes):
# 1. bench/batch_scaling.py: seconds per training epoch of the default example's hybrid for
#    1 -> 1,024 conditions in one batched solve, and for an ensemble of 64 networks in one solve
#    against one network, on the GPU (float32, and float64 as trainer=gpu64) and on the CPU
#    (float64, one thread), every ratio from this one run; it prints the targets (1,024
#    conditions <= 5x one, 64 networks <= 3x one) without asserting them.
# 2. python train.py trainer=gpu and trainer=gpu64 (30 epochs, no distillation): both GPU
#    trainers run end to end.
# 3. bench/speed.py --device cuda: time to a given error against a plain torchdiffeq loop.
# Needs hydra-core, omegaconf, antlr4, pysindy wheels in .whl/ when the machine lacks them.
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
timeout 300 python3 bench/batch_scaling.py --devices cuda,cpu --gpu64 2>&1 \
  | tee "$OUT/batch_scaling.txt"
for trainer in gpu gpu64; do
  echo "## python train.py trainer=$trainer trainer.max_epochs=30 distill=none"
  timeout 60 python3 train.py trainer=$trainer trainer.max_epochs=30 distill=none \
    hydra.run.dir="$OUT/run_$trainer" 2>&1 | tail -3
done
echo "## bench/speed.py --device cuda"
timeout 180 python3 bench/speed.py --device cuda --skip cli --max-seconds "${MAX_SECONDS:-120}" 2>&1 | tee "$OUT/speed_cuda.txt"
