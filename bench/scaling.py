"""How a training epoch's cost grows with the number of species, and where it goes.

    python bench/scaling.py          # about 3 minutes on 2 cores

For the zoo's Lotka-Volterra (2 species), Goodwin and Goldbeter (3), yeast glycolysis (7) and
the generated pathways network20 and network50 (``ude/systems/network.py``), on the
benchmark's base scenario (one condition, 30 times, 5 % noise), with each system's own solver
(dopri5 for the non-stiff ones, rodas5p for the stiff ones and the pathways), prints:

- the CPU seconds of a training epoch of the untrained network (median of 5 epochs, one cycle,
  no warm start: one batched solve through the data, its backward pass and an Adam step);
- for rodas5p: the accepted steps of one solve, the evaluations of the right-hand side and
  its Jacobian, and one forward + backward pass of the untrained hybrid: its CPU seconds in
  the compiled kernels (the default: networks included, ``ude/model/network_kernels.py``),
  split into the forward solve and the adjoint (which gives every gradient, the weights'
  included), and in numpy (``compiled=False``: the path before the networks were compiled).

Then, on Goldbeter with 1 to 8 conditions, a forward + backward pass of all conditions:
compiled with each condition on its own steps (the default), compiled with one step size
shared by all, and in numpy (one shared step, one batched factorisation per step).

Target (printed, not asserted): the 50-species network trains an epoch in 5 s or less.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stiff import BARE_EPOCHS, EpochTimer  # noqa: E402 - bench/stiff.py, beside this script

from ude.benchmark.scenario import Scenario, build_problem  # noqa: E402
from ude.fit import fit  # noqa: E402
from ude.model import Solver  # noqa: E402
from ude.model.hybrid import build_hybrid  # noqa: E402
from ude.model.rodas import Stats  # noqa: E402
from ude.model.rodas_autograd import _Problem, solve  # noqa: E402

SYSTEMS = ("lotka_volterra", "goodwin", "goldbeter", "yeast_glycolysis", "network20", "network50")
EPOCHS = 5


PARTS = ("forward", "adjoint")


def profile_solve(problem) -> tuple[Stats, dict[str, float], float, float]:
    """Work, the compiled pass's CPU split and total, and the numpy pass's CPU total, of one
    forward + backward pass of the untrained hybrid model (the second of two passes: the
    first pays for numba's cache and torch's first calls)."""
    _profile_once(problem)
    return _profile_once(problem)


def _profile_once(problem) -> tuple[Stats, dict[str, float], float, float]:
    torch.set_default_dtype(torch.float64)
    try:
        model = build_hybrid(problem.known, problem.measurements, Solver(problem.solver))
    finally:
        torch.set_default_dtype(torch.float32)
    times = torch.tensor(problem.measurements.times, dtype=torch.float64)
    cond = torch.arange(model.initial.shape[0])
    system = model.numeric_rhs(model.context(cond))
    work = Stats()
    solve_ = _Problem(system.torch_rhs, system.rhs, times, 1e-6, 1e-8, 5000, work)
    solve_.compile()
    y0 = model.initial[cond].detach().numpy()
    start = time.process_time()
    out = solve_.integrate(y0, record=True)
    mid = time.process_time()
    solve_.adjoint_compiled(np.ones_like(out))
    parts = {"forward": mid - start, "adjoint": time.process_time() - mid}
    start = time.process_time()
    forward_backward(model, times, cond, Stats(), compiled=False)
    return work, parts, sum(parts.values()), time.process_time() - start


def forward_backward(
    model, t: torch.Tensor, cond: torch.Tensor, work: Stats, compiled=True, shared=False
) -> None:
    """A rodas5p solve of ``model``'s conditions ``cond`` and its backward pass."""
    model._context = model.context(cond)
    try:
        out = solve(model, model.initial[cond], t, 1e-6, 1e-8, 5000, work, compiled, shared)
    finally:
        model._context = None
    out.sum().backward()


def conditions_axis(name: str = "goldbeter") -> None:
    """A forward + backward pass of 1 to 8 conditions: compiled, each condition on its own
    steps (the default) or one shared step; numpy, one shared step. Condition-steps (each
    condition's accepted steps, summed) and CPU seconds."""
    print(f"\n{name}: a forward + backward pass of several conditions (condition-steps, cpu s)")
    labels = ("compiled, own steps", "compiled, shared", "numpy, shared")
    print(f"{'conditions':>10}" + "".join(f"{label:>22}" for label in labels))
    for n_cond in (1, 2, 4, 8):
        problem = build_problem(Scenario(system=name, n_times=30, conditions=n_cond))
        torch.set_default_dtype(torch.float64)
        try:
            model = build_hybrid(problem.known, problem.measurements, Solver(problem.solver))
        finally:
            torch.set_default_dtype(torch.float32)
        t = torch.tensor(problem.measurements.times, dtype=torch.float64)
        line = f"{n_cond:>10d}"
        for compiled, shared in ((True, False), (True, True), (False, True)):
            work = Stats()
            forward_backward(model, t, torch.arange(n_cond), Stats(), compiled, shared)
            start = time.process_time()
            forward_backward(model, t, torch.arange(n_cond), work, compiled, shared)
            steps = work.accepted * (n_cond if shared else 1)
            line += f"{steps:>12d}{time.process_time() - start:>10.3f}"
        print(line, flush=True)


def main() -> None:
    torch.set_num_threads(1)
    head = f"{'system':<18}{'species':>8}{'solver':>9}{'epoch s':>9}{'steps':>7}{'f':>7}{'jac':>6}"
    print(head + f"{'fwd+bwd s':>10}  " + "  ".join(f"{p:>11}" for p in PARTS) + "  numpy s")
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
            **BARE_EPOCHS,
        )
        epoch = float(np.median(timer.seconds))
        results[name] = epoch
        line = f"{name:<18}{n:>8d}{problem.solver:>9}{epoch:>9.3f}"
        if problem.solver == "rodas5p":
            work, parts, total, numpy_s = profile_solve(problem)
            shares = "  ".join(f"{parts[p]:>6.3f} {parts[p] / total:>4.0%}" for p in PARTS)
            line += f"{work.accepted:>7d}{work.f_evals:>7d}{work.jac_evals:>6d}{total:>10.3f}  "
            line += shares + f"  {numpy_s:.3f} ({numpy_s / total:.1f}x)"
        print(line, flush=True)
    print(
        f"\ntarget: the 50-species network trains an epoch in 5 s or less: "
        f"{results['network50']:.2f} cpu s"
    )
    conditions_axis()


if __name__ == "__main__":
    main()
