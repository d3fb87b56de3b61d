"""Speed of ude's training against a plain torchdiffeq loop, and its scaling over conditions.

    python bench/speed.py [--device cpu|cuda] [--runs 3] [--quick]

Prints three tables (ratios are measured in this one script, on this machine):
1. `python train.py` (the default example) end to end: median wall time and peak memory.
2. Time to reach the same validation error: ude's default schedule vs a plain loop as a
   careful user writes it (dopri5 through the whole series, Adam, the initial state learned,
   the same network and data), the plain loop at each learning rate of a small grid until it
   reaches ude's error or plateaus. The ratio is the best learning rate's time over ude's; when
   no run reaches the error, the best error it got and when, and no ratio. The validation
   error is the NMSE of the simulated states against the noise-free truth on the training
   window.
3. Time of one training step (solve + backward) for 1..256 conditions in one batched solve.

Times in table 2 are the process's CPU time on the CPU (one torch thread: the wall time an
idle machine would take, whatever else runs beside it) and wall time on a GPU.
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchdiffeq import odeint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ude import Solver, build_hybrid, simulate_measurements  # noqa: E402
from ude.benchmark.metrics import forecast_nmse  # noqa: E402
from ude.conf import CONF_DIR  # noqa: E402
from ude.fit import fit, make_module  # noqa: E402
from ude.spec.simulate import simulate_spec  # noqa: E402

logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)


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
    """NMSE of simulated states ``(time, state)`` against the truth, averaged over states
    (:func:`ude.benchmark.metrics.forecast_nmse`, the benchmark's)."""
    with torch.no_grad():
        pred = states_fn()
    return forecast_nmse(pred, truth)


@dataclass
class LoopResult:
    """One plain-loop run: ``seconds`` to reach the target (None: never), iterations run,
    the best validation error and the training seconds when it was reached, and why the run
    stopped (``target``, ``plateau`` or ``cap``)."""

    lr: float
    seconds: float | None
    iterations: int
    best: float
    best_at: float
    stopped: str


def clock(device: str):
    """The clock of table 2: CPU time of this process on the CPU (not inflated by other jobs on
    a shared machine), wall time after a synchronise on a GPU."""
    if device == "cuda":

        def wall() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()

        return wall
    return time.process_time


def plain_loop(
    measurements,
    truth_times: np.ndarray,
    truth: np.ndarray,
    target: float,
    lr: float,
    device: str,
    max_seconds: float,
    plateau_evals: int = 30,
) -> LoopResult:
    """A plain torchdiffeq UDE loop as a careful user writes it: the same 2-32-32-2 network
    and data, dopri5 through the whole series, Adam at ``lr``, the initial state learned
    (from the first sample). Runs until the validation error (every 10 iterations, not timed)
    reaches ``target``, or its best has not improved by 1 % over the last ``plateau_evals``
    evaluations (a plateau), or ``max_seconds`` of training (a cap)."""
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
    y0 = nn.Parameter(data[0].clone())
    t_val = torch.tensor(truth_times, dtype=dtype, device=device)
    opt = torch.optim.Adam([*net.parameters(), y0], lr=lr)
    elapsed, best, best_at, history = 0.0, float("inf"), 0.0, []
    it = 0
    now = clock(device)
    while True:
        it += 1
        start = now()
        pred = odeint(rhs, y0, t, method="dopri5", rtol=1e-6, atol=1e-8)
        loss = ((pred - data) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        elapsed += now() - start
        if it % 10:
            continue
        err = validation_error(
            lambda: odeint(rhs, y0, t_val, method="dopri5", rtol=1e-6, atol=1e-8).cpu().numpy(),
            truth,
        )
        if err < best:
            best, best_at = err, elapsed
        history.append(best)
        if err <= target:
            return LoopResult(lr, elapsed, it, err, elapsed, "target")
        if len(history) > plateau_evals and best > 0.99 * history[-plateau_evals - 1]:
            return LoopResult(lr, None, it, best, best_at, "plateau")
        if elapsed > max_seconds:
            return LoopResult(lr, None, it, best, best_at, "cap")


def default_schedule() -> tuple[int, dict]:
    """Epochs and optimiser settings of `python train.py`, read from ude/conf/."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config")
    return int(cfg.trainer.max_epochs), dict(cfg.optim)


def unit(device: str) -> str:
    return "s wall" if device == "cuda" else "CPU s"


def time_to_error(device: str, lrs: list[float], max_seconds: float) -> None:
    m = simulate_measurements("lotka_volterra", seed=0)
    truth_times = np.linspace(m.times[0], m.times[-1], 100)
    truth = simulate_spec(m.truth.spec, m.truth.initial, truth_times)[0]
    epochs, optim = default_schedule()
    now = clock(device)
    start = now()
    accelerator = "gpu" if device == "cuda" else "cpu"
    result = fit(
        "lotka_volterra", m, max_epochs=epochs, trainer_kwargs={"accelerator": accelerator}, **optim
    )
    ude_seconds = now() - start
    model = result.model
    cond = torch.zeros(1, dtype=torch.long, device=model.initial.device)
    t_val = torch.tensor(truth_times, dtype=model.initial.dtype, device=model.initial.device)
    ude_err = validation_error(lambda: model.simulate(t_val, cond)[0].cpu().numpy(), truth)
    print(
        f"ude default schedule (warm start {optim['warm_start_steps']} steps + {epochs} "
        f"epochs at lr {optim['lr']}): {ude_seconds:.1f} {unit(device)} "
        f"to validation NMSE {ude_err:.2e}",
        flush=True,
    )
    runs = []
    for lr in lrs:
        r = plain_loop(m, truth_times, truth, ude_err, lr, device, max_seconds)
        runs.append(r)
        reached = "did not"
        if r.seconds is not None:
            reached = f"reached it in {r.seconds:.1f} {unit(device)}"
        print(
            f"  plain loop, Adam lr {lr:g}: {reached}; {r.iterations} iterations, stopped at "
            f"{r.stopped}; best {r.best:.2e} after {r.best_at:.1f} {unit(device)}",
            flush=True,
        )
    done = [r for r in runs if r.seconds is not None]
    grid = f"learning rates {', '.join(f'{lr:g}' for lr in lrs)}"
    if done:
        fastest = min(done, key=lambda r: r.seconds)
        print(
            f"plain torchdiffeq loop (best of {grid}): {fastest.seconds:.1f} {unit(device)} at lr "
            f"{fastest.lr:g} to {ude_err:.2e} -> ratio {fastest.seconds / ude_seconds:.1f}x "
            "in ude's favour"
        )
    else:
        best = min(runs, key=lambda r: r.best)
        print(
            f"plain torchdiffeq loop never reached {ude_err:.2e} ({grid}, each until a "
            f"plateau or {max_seconds:.0f} {unit(device)}); best {best.best:.2e} after "
            f"{best.best_at:.1f} {unit(device)} "
            f"(lr {best.lr:g}); no ratio"
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
        "--lrs",
        type=float,
        nargs="+",
        default=[3e-3, 1e-2, 3e-2],
        help="the plain loop's learning-rate grid (its best is compared)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="cap on one plain-loop run's training time (CPU seconds on the CPU), if it "
        "neither reaches the target nor plateaus",
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
        time_to_error(args.device, args.lrs, args.max_seconds)
    if "scaling" not in args.skip:
        print("\n## 3. One training step vs number of conditions (batched solve)")
        conditions_scaling(args.device, [1, 4, 16] if args.quick else [1, 4, 16, 64, 256])


if __name__ == "__main__":
    main()
