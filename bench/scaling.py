"""How a training epoch's cost grows with the number of species, and where it goes.

    python bench/scaling.py          # about 3 minutes on 2 cores

For the zoo's Lotka-Volterra (2 species), Goodwin and Goldbeter (3), yeast glycolysis (7) and
the generated pathways network20 and network50 (``ude/systems/network.py``), on the
benchmark's base scenario (one condition, 30 times, 5 % noise), with each system's own solver
(dopri5 for the non-stiff ones, rodas5p for the stiff ones and the pathways), prints:

- the CPU seconds of a training epoch (median of 5 epochs after the warm start: one batched
  solve through the data, its backward pass and an Adam step);
- for rodas5p: the accepted steps of one solve, the evaluations of the right-hand side and
  its Jacobian, and where one forward + backward pass spends its CPU time: the right-hand
  side and Jacobian in the forward solve, the rest of the forward steps (the linear algebra
  and bookkeeping), the batched derivatives the adjoint needs (stage Jacobians, second
  derivatives), the adjoint recursion itself (including the networks' second directional
  derivatives), and the one torch pass for the parameters' gradient.

Then, on Goldbeter with 1 to 8 conditions, one batched solve (one step size shared by the
conditions, one batched factorisation per step) against one solve per condition.

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

from stiff import EpochTimer  # noqa: E402 - bench/stiff.py, beside this script

from ude.benchmark.scenario import Scenario, build_problem  # noqa: E402
from ude.fit import fit  # noqa: E402
from ude.model import Solver, rodas  # noqa: E402
from ude.model.hybrid import build_hybrid  # noqa: E402
from ude.model.rodas import Stats  # noqa: E402
from ude.model.rodas_autograd import _parameter_grads, _Problem, solve  # noqa: E402

SYSTEMS = ("lotka_volterra", "goodwin", "goldbeter", "yeast_glycolysis", "network20", "network50")
EPOCHS = 5
PARTS = ("fwd f+J", "fwd steps", "adj. derivs", "adjoint", "param grads")


class Clock:
    """Wraps functions so that their CPU time adds up under a label."""

    def __init__(self):
        self.seconds: dict[str, float] = dict.fromkeys(PARTS, 0.0)

    def wrap(self, label: str, fn):
        def timed(*args):
            start = time.process_time()
            try:
                return fn(*args)
            finally:
                self.seconds[label] += time.process_time() - start

        return timed


def profile_solve(problem) -> tuple[Stats, dict[str, float], float]:
    """Work and CPU split of one forward + backward pass of the untrained hybrid model, its
    parts called one by one as the solver's autograd function calls them (the second of two
    passes: the first one pays for torch's and numpy's first calls)."""
    _profile_once(problem)
    return _profile_once(problem)


def _profile_once(problem) -> tuple[Stats, dict[str, float], float]:
    torch.set_default_dtype(torch.float64)
    try:
        model = build_hybrid(problem.known, problem.measurements, Solver(problem.solver))
    finally:
        torch.set_default_dtype(torch.float32)
    times = np.asarray(problem.measurements.times, dtype=float)
    cond = torch.arange(model.initial.shape[0])
    system = model.numeric_rhs(model.context(cond))
    rhs, clock, work = system.rhs, Clock(), Stats()
    f = clock.wrap("fwd f+J", lambda _t, y: rhs(y))
    fj = clock.wrap("fwd f+J", lambda _t, y: rhs.value_and_jacobian(y))
    y0 = model.initial[cond].detach().numpy()
    start = time.process_time()
    out, traj = rodas.integrate(f, fj, y0, times, 1e-6, 1e-8, 5000, record=True, stats=work)
    clock.seconds["fwd steps"] = time.process_time() - start - clock.seconds["fwd f+J"]
    start = time.process_time()
    _, omega = rodas.adjoint(
        traj,
        np.ones_like(out),
        clock.wrap("adj. derivs", rhs.jacobian),
        clock.wrap("adj. derivs", rhs.hessian_values),
        rhs.directional_hessian,
    )
    clock.seconds["adjoint"] = time.process_time() - start - clock.seconds["adj. derivs"]
    problem_ = _Problem(system.torch_rhs, rhs, torch.from_numpy(times), 1e-6, 1e-8, 5000, None)
    needed = (system.context.requires_grad, *(True for _ in system.params))
    start = time.process_time()
    _parameter_grads(problem_, traj, omega, system.context, system.params, needed)
    clock.seconds["param grads"] = time.process_time() - start
    return work, clock.seconds, sum(clock.seconds.values())


def forward_backward(model, t: torch.Tensor, cond: torch.Tensor, work: Stats) -> None:
    """A rodas5p solve of ``model``'s conditions ``cond`` and its backward pass."""
    model._context = model.context(cond)
    try:
        out = solve(model, model.initial[cond], t, 1e-6, 1e-8, 5000, work)
    finally:
        model._context = None
    out.sum().backward()


def conditions_axis(name: str = "goldbeter") -> None:
    """One batched solve (shared steps, one batched factorisation per step) against one solve
    per condition: accepted steps and CPU seconds of a forward + backward pass."""
    print(f"\n{name}: conditions solved together (shared step) or one by one, forward+backward")
    print(f"{'conditions':>10}{'steps':>8}{'cpu s':>8}{'steps 1by1':>12}{'cpu s 1by1':>12}")
    for n_cond in (1, 2, 4, 8):
        problem = build_problem(Scenario(system=name, n_times=30, conditions=n_cond))
        torch.set_default_dtype(torch.float64)
        try:
            model = build_hybrid(problem.known, problem.measurements, Solver(problem.solver))
        finally:
            torch.set_default_dtype(torch.float32)
        t = torch.tensor(problem.measurements.times, dtype=torch.float64)
        together, alone = Stats(), Stats()
        start = time.process_time()
        forward_backward(model, t, torch.arange(n_cond), together)
        mid = time.process_time()
        for c in range(n_cond):
            forward_backward(model, t, torch.tensor([c]), alone)
        end = time.process_time()
        print(
            f"{n_cond:>10d}{together.accepted:>8d}{mid - start:>8.3f}"
            f"{alone.accepted:>12d}{end - mid:>12.3f}"
        )


def main() -> None:
    torch.set_num_threads(1)
    head = f"{'system':<18}{'species':>8}{'solver':>9}{'epoch s':>9}{'steps':>7}{'f':>7}{'jac':>6}"
    print(head + f"{'fwd+bwd s':>10}  " + "  ".join(f"{p:>11}" for p in PARTS))
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
            shares = "  ".join(f"{parts[p]:>6.3f} {parts[p] / total:>4.0%}" for p in PARTS)
            line += f"{work.accepted:>7d}{work.f_evals:>7d}{work.jac_evals:>6d}{total:>10.3f}  "
            line += shares
        print(line, flush=True)
    print(
        f"\ntarget: the 50-species network trains an epoch in 5 s or less: "
        f"{results['network50']:.2f} cpu s"
    )
    conditions_axis()


if __name__ == "__main__":
    main()
