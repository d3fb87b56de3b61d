"""How a training epoch's cost grows with the number of species, and where it goes.

    python bench/scaling.py          # about 3 minutes on 2 cores

For the zoo's Lotka-Volterra (2 species), Goodwin and Goldbeter (3), yeast glycolysis (7) and
the generated pathways network20 and network50 (``ude/systems/network.py``), on the
benchmark's base scenario (one condition, 30 times, 5 % noise), with each system's own solver
(dopri5 for the non-stiff ones, rodas5p for the stiff ones and the pathways), prints:

- the CPU seconds of a training epoch (median of 5 epochs after the warm start: one batched
  solve through the data, its backward pass and an Adam step);
- for rodas5p: the accepted steps of one solve, the evaluations of the right-hand side and
  its Jacobian, and where one forward + backward pass spends its CPU time (cProfile): the
  right-hand side and Jacobian in the forward solve, the rest of the forward steps (the
  linear algebra and bookkeeping), the adjoint recursion, the batched derivatives the
  adjoint needs, and the one torch pass for the parameters' gradient.

Target (printed, not asserted): the 50-species network trains an epoch in 5 s or less.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ude.benchmark.scenario import Scenario, build_problem  # noqa: E402
from ude.fit import fit  # noqa: E402
from ude.model import Solver  # noqa: E402
from ude.model.hybrid import build_hybrid  # noqa: E402
from ude.model.rodas import Stats  # noqa: E402
from ude.model.rodas_autograd import solve as rodas_solve  # noqa: E402

SYSTEMS = ("lotka_volterra", "goodwin", "goldbeter", "yeast_glycolysis", "network20", "network50")
EPOCHS = 5
# (label, function names whose cumulative time it is): the parts of one forward + backward
PARTS = [
    ("fwd f+J", [("numeric_rhs.py", "__call__"), ("numeric_rhs.py", "value_and_jacobian")]),
    ("fwd steps", [("rodas.py", "_integrate")]),
    ("adjoint", [("rodas.py", "adjoint")]),
    ("adj. derivs", [("numeric_rhs.py", "jacobian"), ("numeric_rhs.py", "hessian_values")]),
    ("param grads", [("rodas_autograd.py", "_parameter_grads")]),
]


class EpochTimer(pl.Callback):
    """CPU seconds of each training epoch."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self._start = time.process_time()

    def on_train_epoch_end(self, trainer, module) -> None:
        self.seconds.append(time.process_time() - self._start)


def cumulative(stats: pstats.Stats, file: str, name: str) -> float:
    return sum(
        v[3] for (path, _, fn), v in stats.stats.items() if path.endswith(file) and fn == name
    )


def profile_solve(problem) -> tuple[Stats, dict[str, float], float]:
    """Work and CPU split of one forward + backward pass of the untrained hybrid model."""
    torch.set_default_dtype(torch.float64)
    try:
        model = build_hybrid(problem.known, problem.measurements, Solver(problem.solver))
    finally:
        torch.set_default_dtype(torch.float32)
    t = torch.tensor(problem.measurements.times, dtype=torch.float64)
    cond = torch.arange(model.initial.shape[0])
    work = Stats()
    profile = cProfile.Profile()
    start = time.process_time()
    profile.enable()
    model._context = model.context(cond)
    try:
        out = rodas_solve(model, model.initial[cond], t, 1e-6, 1e-8, 5000, work)
    finally:
        model._context = None
    out.sum().backward()
    profile.disable()
    total = time.process_time() - start
    stats = pstats.Stats(profile)
    parts = {label: sum(cumulative(stats, f, n) for f, n in fns) for label, fns in PARTS}
    # the steps' own time: the forward loop less the right-hand side and Jacobian in it
    parts["fwd steps"] -= parts["fwd f+J"]
    # the adjoint's recursion less the batched derivatives it asks for
    parts["adjoint"] -= parts["adj. derivs"]
    return work, parts, total


def main() -> None:
    torch.set_num_threads(1)
    head = f"{'system':<18}{'species':>8}{'solver':>9}{'epoch s':>9}{'steps':>7}{'f':>7}{'jac':>6}"
    print(head + f"{'fwd+bwd s':>10}  " + "  ".join(f"{p:>11}" for p, _ in PARTS))
    results = {}
    for name in SYSTEMS:
        problem = build_problem(Scenario(system=name, n_times=30))
        n = len(problem.truth.states)
        timer = EpochTimer()
        fit(
            problem.known,
            problem.measurements,
            solver=Solver(problem.solver),
            max_epochs=EPOCHS,
            seed=0,
            trainer_kwargs={"callbacks": [timer]},
        )
        epoch = float(np.median(timer.seconds))
        results[name] = epoch
        line = f"{name:<18}{n:>8d}{problem.solver:>9}{epoch:>9.3f}"
        if problem.solver == "rodas5p":
            work, parts, total = profile_solve(problem)
            shares = "  ".join(f"{parts[p]:>6.3f} {parts[p] / total:>3.0%}" for p, _ in PARTS)
            line += f"{work.accepted:>7d}{work.f_evals:>7d}{work.jac_evals:>6d}{total:>10.3f}  "
            line += shares
        print(line, flush=True)
    print(
        f"\ntarget: the 50-species network trains an epoch in 5 s or less: "
        f"{results['network50']:.2f} cpu s"
    )


if __name__ == "__main__":
    main()
