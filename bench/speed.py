"""Speed of ude's training against a plain torchdiffeq loop, and its scaling over conditions.

    python bench/speed.py [--device cpu|cuda] [--runs 3] [--quick]

Prints four tables (ratios are measured in this one script, on this machine):
1. `python train.py` (the default example) end to end: median wall time and peak memory.
2. Time to reach the same validation error: ude's default schedule vs a plain loop (dopri5,
   Adam, whole trajectory from t=0, the same network and data). The validation error is the
   NMSE of the simulated observables against the noise-free truth on the training window.
3. Time of one training step (solve + backward) for 1..256 conditions in one batched solve.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchdiffeq import odeint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ude import Solver, build_hybrid, simulate_measurements  # noqa: E402
from ude.conf import CONF_DIR  # noqa: E402
from ude.fit import fit, make_module  # noqa: E402
from ude.spec.simulate import simulate_spec  # noqa: E402

logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
warnings.filterwarnings("ignore")


def default_example(runs: int) -> None:
    """`python train.py` as a user runs it: wall time (median of ``runs``), its CPU time
    (user + system; with one thread, the wall time an idle machine would take) and peak
    memory."""
    times, cpus, peaks = [], [], []
    for i in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "train.py", f"hydra.run.dir={tmp}/run"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                env={**os.environ, "WANDB_MODE": "disabled"},
            )
            times.append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-2000:])
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        peaks.append(after.ru_maxrss / 1024)
        print(f"  run {i + 1}: {times[-1]:.1f} s wall, {cpus[-1]:.1f} s CPU", flush=True)
    print(
        f"python train.py: median {statistics.median(times):.1f} s wall, "
        f"{statistics.median(cpus):.1f} s CPU over {runs} runs; "
        f"peak memory {max(peaks):.0f} MB (max RSS of the child processes)"
    )


def validation_error(states_fn, truth: np.ndarray) -> float:
    """NMSE of simulated states ``(time, state)`` against the truth, averaged over states."""
    with torch.no_grad():
        pred = states_fn()
    return float(np.mean(np.mean((pred - truth) ** 2, axis=0) / np.var(truth, axis=0)))


def plain_loop(
    measurements, truth_times, truth, target: float, device: str, max_iters: int, max_seconds: float
) -> tuple[float | None, int, float]:
    """A plain torchdiffeq UDE loop; returns (seconds to reach ``target`` or None, iterations,
    best error)."""
    torch.manual_seed(0)
    dtype = torch.float64
    net = nn.Sequential(
        nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2)
    ).to(device, dtype)

    def rhs(t, y):
        known = torch.stack([1.3 * y[..., 0], -1.8 * y[..., 1]], dim=-1)
        return known + net(y)

    data = torch.tensor(measurements.values[0, :, 0, :], dtype=dtype, device=device)
    t = torch.tensor(measurements.times, dtype=dtype, device=device)
    y0 = data[0]
    t_val = torch.tensor(truth_times, dtype=dtype, device=device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    elapsed, best = 0.0, float("inf")
    for it in range(1, max_iters + 1):
        start = time.perf_counter()
        pred = odeint(rhs, y0, t, method="dopri5", rtol=1e-6, atol=1e-8)
        loss = ((pred - data) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        elapsed += time.perf_counter() - start
        if it % 10 == 0:  # evaluation is not timed
            err = validation_error(
                lambda: odeint(rhs, y0, t_val, method="dopri5", rtol=1e-6, atol=1e-8).cpu().numpy(),
                truth,
            )
            best = min(best, err)
            if err <= target:
                return elapsed, it, err
        if elapsed > max_seconds:
            break
    return None, it, best


def default_schedule() -> tuple[int, dict]:
    """Epochs and optimiser settings of `python train.py`, read from ude/conf/."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config")
    return int(cfg.trainer.max_epochs), dict(cfg.optim)


def time_to_error(device: str, budget_factor: float) -> None:
    m = simulate_measurements("lotka_volterra", seed=0)
    truth_times = np.linspace(m.times[0], m.times[-1], 100)
    truth = simulate_spec(m.truth.spec, m.truth.initial, truth_times)[0]
    epochs, optim = default_schedule()
    start = time.perf_counter()
    accelerator = "gpu" if device == "cuda" else "cpu"
    result = fit(
        "lotka_volterra", m, max_epochs=epochs, trainer_kwargs={"accelerator": accelerator}, **optim
    )
    ude_seconds = time.perf_counter() - start
    model = result.model
    cond = torch.zeros(1, dtype=torch.long, device=model.initial.device)
    t_val = torch.tensor(truth_times, dtype=model.initial.dtype, device=model.initial.device)
    ude_err = validation_error(lambda: model.simulate(t_val, cond)[0].cpu().numpy(), truth)
    print(
        f"ude default schedule (warm start {optim['warm_start_steps']} steps + {epochs} "
        f"epochs at lr {optim['lr']}): {ude_seconds:.1f} s "
        f"to validation NMSE {ude_err:.2e}",
        flush=True,
    )
    budget = budget_factor * ude_seconds
    seconds, iters, best = plain_loop(
        m, truth_times, truth, ude_err, device, max_iters=100_000, max_seconds=budget
    )
    if seconds is None:
        print(
            f"plain torchdiffeq loop: did not reach {ude_err:.2e} in {budget:.0f} s "
            f"({iters} iterations; best {best:.2e}) -> ratio > {budget / ude_seconds:.1f}x"
        )
    else:
        print(
            f"plain torchdiffeq loop: {seconds:.1f} s ({iters} iterations) to {best:.2e} "
            f"-> ratio {seconds / ude_seconds:.1f}x in ude's favour"
        )


def conditions_scaling(device: str, sizes: list[int]) -> None:
    rng = np.random.default_rng(0)
    base = None
    print(f"{'conditions':>10} {'ms/step':>9} {'vs 1':>6}")
    for n in sizes:
        initial = (np.array([0.44249296, 4.6280594]) * rng.uniform(0.5, 1.5, (n, 2))).tolist()
        m = simulate_measurements("lotka_volterra", initial=initial, seed=0)
        torch.set_default_dtype(torch.float64)
        try:
            model = build_hybrid("lotka_volterra", m, Solver())
        finally:
            torch.set_default_dtype(torch.float32)
        module = make_module(model, m).to(device)
        mask = torch.ones(m.values.shape, dtype=torch.bool)
        batch = {
            "condition": torch.arange(n),
            "values": torch.tensor(m.values),
            "mask": mask,
            "sigma": torch.zeros(m.values.shape),
        }
        batch = {k: v.to(device) for k, v in batch.items()}
        steps = []
        for i in range(6):
            start = time.perf_counter()
            module.losses(batch)["loss"].backward()
            if device == "cuda":
                torch.cuda.synchronize()
            if i:  # the first step warms up allocators and caches
                steps.append(time.perf_counter() - start)
        ms = 1000 * statistics.median(steps)
        base = base or ms
        print(f"{n:>10} {ms:>9.1f} {ms / base:>6.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer conditions, one CLI run")
    parser.add_argument(
        "--budget",
        type=float,
        default=15.0,
        help="the plain loop runs for at most this many times ude's time",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["cli", "ratio", "scaling"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, device {args.device}, "
        f"{os.cpu_count()} CPUs visible, 1 torch thread"
    )
    if "cli" not in args.skip and args.device == "cpu":
        print("\n## 1. The default example, end to end")
        default_example(args.runs)
    if "ratio" not in args.skip:
        print("\n## 2. Time to the same validation error")
        time_to_error(args.device, args.budget)
    if "scaling" not in args.skip:
        print("\n## 3. One training step vs number of conditions (batched solve)")
        conditions_scaling(args.device, [1, 4, 16] if args.quick else [1, 4, 16, 64, 256])


if __name__ == "__main__":
    main()
