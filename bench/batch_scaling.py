"""Where the GPU pays: one process solving many problems in one batched solve.

    python bench/batch_scaling.py [--devices cpu,cuda] [--conditions 1,4,16,64,256,1024]
                                  [--members 64] [--steps 3]

Times one training epoch of the default example's hybrid model (Lotka-Volterra, 2 -> 32 -> 32
-> 2 network, dopri5; all conditions in one batch, so an epoch is one step: solve, NLL,
backward, Adam) for
1. 1 -> 1,024 conditions (initial states drawn around the scenario's), one network;
2. an ensemble of ``--members`` independent networks (``model.ensemble``) on one condition,
   against one network;
on each device, in the precision its trainer uses (``trainer=cpu``: float64; ``trainer=gpu``:
float32; ``--gpu64`` adds ``trainer=gpu64``'s float64 on the GPU). Every ratio is measured in
this one run: against one condition (or one network) on the same device, and GPU against CPU.
The targets of issue 18 are printed, not asserted: on the GPU, 1,024 conditions within 5x the
time of one, and 64 networks within 3x the time of one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ude import Solver, build_hybrid, simulate_measurements  # noqa: E402
from ude.data.datamodule import ConditionDataset  # noqa: E402
from ude.fit import make_module  # noqa: E402

warnings.filterwarnings("ignore")
SCENARIO = np.array([0.44249296, 4.6280594])  # Lotka-Volterra's initial state


def epoch_seconds(
    conditions: int, members: int, device: str, dtype: torch.dtype, steps: int
) -> float:
    """Median seconds of one epoch (one batched step) over ``steps``, after one warm-up."""
    rng = np.random.default_rng(0)
    initial = (SCENARIO * rng.uniform(0.5, 1.5, (conditions, 2))).tolist()
    data = simulate_measurements("lotka_volterra", initial=initial, seed=0)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = build_hybrid("lotka_volterra", data, Solver(), ensemble=members)
        module = make_module(model, data).to(device)
    finally:
        torch.set_default_dtype(previous)
    items = [ConditionDataset(data)[i] for i in range(conditions)]
    batch = {
        k: torch.stack([it[k] for it in items]).to(device=device)
        for k in ("condition", "values", "mask", "sigma")
    }
    batch = {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    times = []
    for i in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.zero_grad()
        module.losses(batch)["loss"].backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up allocators, caches and kernels
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--conditions", default="1,4,16,64,256,1024")
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--gpu64", action="store_true", help="also the GPU in float64")
    args = parser.parse_args()
    sizes = [int(x) for x in args.conditions.split(",")]
    runs = []
    for device in args.devices.split(","):
        runs.append((device, torch.float64 if device == "cpu" else torch.float32))
        if device == "cuda" and args.gpu64:
            runs.append((device, torch.float64))
    torch.set_num_threads(1)  # as train.py (threads=1): small solves run fastest on one
    print(f"torch {torch.__version__}; {torch.get_num_threads()} CPU thread(s)")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    results: dict[tuple[str, str], dict[str, float]] = {}
    for device, dtype in runs:
        name = (device, str(dtype).removeprefix("torch."))
        print(f"\n## {device} ({name[1]})")
        print(f"{'conditions':>10} {'members':>8} {'s/epoch':>9} {'vs one':>7}")
        row: dict[str, float] = {}
        for n in sizes:
            row[f"c{n}"] = epoch_seconds(n, 1, device, dtype, args.steps)
            ratio = row[f"c{n}"] / row[f"c{sizes[0]}"]
            print(f"{n:>10} {1:>8} {row[f'c{n}']:>9.3f} {ratio:>6.2f}x", flush=True)
        if args.members > 1:
            row["m1"] = row.get("c1") or epoch_seconds(1, 1, device, dtype, args.steps)
            row["ensemble"] = epoch_seconds(1, args.members, device, dtype, args.steps)
            ratio = row["ensemble"] / row["m1"]
            print(f"{1:>10} {args.members:>8} {row['ensemble']:>9.3f} {ratio:>6.2f}x", flush=True)
        results[name] = row
    cpu = results.get(("cpu", "float64"))
    for (device, dtype), row in results.items():
        if device != "cuda":
            continue
        print(f"\n## {device} ({dtype}) against the CPU (float64): GPU time / CPU time")
        if cpu:
            for key in row:
                if key in cpu:
                    print(f"{key:>10} {row[key] / cpu[key]:>7.2f}")
        big, ens = f"c{sizes[-1]}", "ensemble"
        if big in row and "c1" in row:
            r = row[big] / row["c1"]
            print(f"target: {sizes[-1]} conditions <= 5x one: {r:.2f}x "
                  f"({'met' if r <= 5 else 'short'})")  # fmt: skip
        if ens in row:
            r = row[ens] / row["m1"]
            print(f"target: {args.members} networks <= 3x one: {r:.2f}x "
                  f"({'met' if r <= 3 else 'short'})")  # fmt: skip


if __name__ == "__main__":
    main()
