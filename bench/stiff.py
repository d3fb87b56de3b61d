"""Stiff kinetics: ude's solvers against scipy's (the floor) on Goldbeter and yeast glycolysis.

    python bench/stiff.py            # about 3 minutes on 2 cores (the old solvers dominate)
    python bench/stiff.py --quick    # rodas5p and scipy only, no training: about 30 s

For each system's true model, from its scenario's initial state over its scenario's time grid
(Goldbeter: [0, 100], 41 times; yeast glycolysis: [0, 5], 51 times), at rtol 1e-6, atol 1e-8:

- scipy's LSODA and BDF (the floor: Fortran/Python stepping with the analytic Jacobian) and
  Radau, forward only;
- ude's ``rodas5p``, forward and forward + backward (loss: the sum of the solution; gradient
  in the initial state and every parameter): compiled (numba: the solve and the exact adjoint
  of its steps, the default) and in numpy (``compiled=False``, the reference); the compiled
  kernels' first call in a process (loading numba's on-disk cache, or compiling when there is
  none) is printed apart;
- ude's ``rosenbrock23`` (ode23s through torch autograd, the stiff solver before rodas5p) and
  torchdiffeq's ``dopri5``, forward and forward + backward;
- torchdiffeq 0.2.5's ``implicit_adams`` (its only implicit method: a fixed-step
  Adams-Moulton corrector by functional iteration, which diverges on stiff steps; the
  Broyden-solved implicit Runge-Kutta methods of torchdiffeq's development branch are in no
  release), forward, at a fixed step near the explicit stability limit;

with CPU seconds (best of 3 below 2 s; the machine is shared, so CPU time rather than wall
time), the ratio to LSODA's forward CPU time, the evaluations of the right-hand side and of
its Jacobian, and the error against Radau at rtol 1e-10: the largest pointwise relative
error, and the largest error over each state's peak. scipy's right-hand side and Jacobian are
ude's compiled tapes (``ude.spec.derivatives``), one condition per call: the same arithmetic
rodas5p uses ("x LSODA"). A second floor ("x fast") is LSODA with the
right-hand side a scipy user writes: the equations as scalar Python code (lambdify).
rodas5p's backward pass also evaluates the Jacobian at every stage point of the accepted
steps (8 per step) and second derivatives at each step's start, in a few batched calls.

Then the true model over the benchmark's 8 conditions in one compiled forward + backward: one
step size shared by all conditions (each takes every other's steps) against each condition's
own (the default), with the condition-steps each takes.

Then the same forward + backward for the hybrid model a training run solves (known terms + an
untrained network), compiled (networks in numba, the default) and in numpy, for one condition
and for the benchmark's 8 (the network's last layer scaled up so that it matters), its
training epochs, and an ensemble of 4 hybrids (``model.ensemble=4``) compiled against the
generic torch path.

Targets (printed, not asserted): Goldbeter forward + backward within 10x of LSODA's forward;
a Goldbeter training epoch within 1 s.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import sympy as sp
import torch
from scipy.integrate import solve_ivp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ude.benchmark.scenario import Scenario, build_problem, initial_states  # noqa: E402
from ude.model import Solver, SolverFailed  # noqa: E402
from ude.model.hybrid import HybridODE, build_hybrid  # noqa: E402
from ude.model.rodas import Stats  # noqa: E402
from ude.model.rodas_autograd import solve as rodas_solve  # noqa: E402
from ude.spec.derivatives import compiled_derivatives  # noqa: E402
from ude.spec.model_spec import ModelSpec  # noqa: E402
from ude.systems import get_system  # noqa: E402

SYSTEMS = ("goldbeter", "yeast_glycolysis")
RTOL, ATOL = 1e-6, 1e-8
F64 = torch.float64
# implicit_adams' functional iteration converges only for steps below about 1/|fastest rate|
ADAMS_STEP = {"goldbeter": 0.005, "yeast_glycolysis": 0.002}

ONE_CYCLE = {"fit_cycles": 1, "rescue_segments": 0, "step_backs": 0}
"""One cycle of trajectory fitting without the rescue or the step-backs: the schedule
``ude.fit`` trained with before it took ``python train.py``'s (2026-12-07), which the figures
of this script, ``bench/scaling.py`` and ``bench/stiff_schedule.py`` in docs/performance.md
were measured with."""
BARE_EPOCHS = {**ONE_CYCLE, "warm_start_steps": 0}
""":data:`ONE_CYCLE` from the untrained network (no warm start): the epochs' cost alone."""


def cpu_seconds(run: Callable[[], object], repeat_below: float = 2.0) -> tuple[float, object]:
    """Best CPU time of up to three runs (one when a run takes longer than ``repeat_below``)
    and the last run's result."""
    best, out = np.inf, None
    for _ in range(3):
        start = time.process_time()
        out = run()
        best = min(best, time.process_time() - start)
        if best > repeat_below:
            break
    return best, out


def learned(spec: ModelSpec) -> ModelSpec:
    """``spec`` with every parameter learned (so the backward pass has them to reach)."""
    params = {k: replace(p, learn=True) for k, p in spec.parameters.items()}
    return ModelSpec(**{**spec.__dict__, "parameters": params})


def twin(spec: ModelSpec, y0: np.ndarray, method: str) -> HybridODE:
    """The model ``spec`` from ``y0 (condition, state)``, every parameter learned."""
    n = len(spec.states)
    return HybridODE(
        learned(spec),
        list(spec.states),
        len(y0),
        inputs=torch.zeros(1, 0, dtype=F64),
        initial=torch.tensor(y0, dtype=F64),
        solver=Solver(method, rtol=RTOL, atol=ATOL),
        state_scale=torch.ones(n, dtype=F64),
        time_scale=1.0,
        noise=torch.ones(n, dtype=F64),
    ).double()


def conditions_run(model: HybridODE, t: torch.Tensor, shared: bool, compiled: bool = True) -> Stats:
    """Forward + backward of every condition of ``model`` in one rodas5p solve (``compiled``
    or numpy): one step size for all (``shared``) or each condition's own."""
    cond = torch.arange(model.initial.shape[0])
    model.zero_grad()
    model._context = model.context(cond)
    stats = Stats()
    try:
        sol = rodas_solve(model, model.initial[cond], t, RTOL, ATOL, 5000, stats, compiled, shared)
    finally:
        model._context = None
    sol.sum().backward()
    return stats


def bench_conditions(name: str, n: int = 8) -> None:
    """The true model over the benchmark's ``n`` conditions (its scenario's initial states,
    then log-normal scalings of the first): a shared step against each condition's own."""
    system = get_system(name)
    sc = system.scenario
    t = torch.from_numpy(np.linspace(sc.t_start, sc.t_end, sc.n_times))
    model = twin(system.truth, initial_states(system, n), "rodas5p")
    ude_run(model, t, True)  # numba's cache
    line = f"{name}, {n} conditions, rodas5p forward+backward:"
    for shared in (True, False):
        seconds, stats = cpu_seconds(lambda s=shared: conditions_run(model, t, s))
        steps = stats.accepted * (n if shared else 1)
        label = "one shared step" if shared else "each its own"
        line += f" {label} {seconds:.3f} cpu s ({steps} condition-steps);"
    print(line.rstrip(";"))


class Counted(torch.nn.Module):
    """A HybridODE's right-hand side that counts its calls (for the torch-stepped solvers)."""

    def __init__(self, model: HybridODE):
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(t, y)


def ude_run(
    model: HybridODE, t: torch.Tensor, backward: bool, compiled: bool = True
) -> tuple[np.ndarray, str]:
    """One solve (and backward pass) of ``model``: the solution ``(time, state)`` of condition
    0 and the work done (rodas5p: ``compiled`` kernels where they apply, else numpy)."""
    cond = torch.tensor([0])
    model.zero_grad()
    with torch.set_grad_enabled(backward):
        model._context = model.context(cond)
        y0 = model.initial[cond]
        try:
            if model.solver.method == "rodas5p":
                stats = Stats()
                sol = rodas_solve(model, y0, t, RTOL, ATOL, 5000, stats, compiled)
                work = f"{stats.f_evals:>7d}{stats.jac_evals:>7d}"
            else:
                counted = Counted(model)
                sol = model.solver(counted, y0, t)
                work = f"{counted.calls:>7d}{'-':>7}"
        finally:
            model._context = None
        if backward:
            sol.sum().backward()
    return sol.detach()[:, 0].numpy(), work


def errors(sol: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Largest pointwise relative error and largest error over the state's peak value."""
    diff = np.abs(sol - ref)
    return float(np.max(diff / np.abs(ref))), float(np.max(diff / np.abs(ref).max(axis=0)))


def scipy_run(
    spec: ModelSpec, y0: np.ndarray, times: np.ndarray, method: str, rtol: float, atol: float
) -> tuple[np.ndarray, dict[str, int]]:
    """scipy's solution ``(time, state)`` with ude's compiled right-hand side and Jacobian,
    and their evaluation counts."""
    d = compiled_derivatives(spec.known_rhs(), spec.symbols, len(spec.states))
    params = np.array([p.value for p in spec.parameters.values()])
    count = {"f": 0, "J": 0}

    def f(_t, y):
        count["f"] += 1
        return d.f(y, params)

    def jac(_t, y):
        count["J"] += 1
        return d.f_jac(y, params)[1]

    with np.errstate(all="ignore"):
        sol = solve_ivp(
            f, (times[0], times[-1]), y0, method, t_eval=times, rtol=rtol, atol=atol, jac=jac
        )
    return sol.y.T, count


def scipy_fast(
    spec: ModelSpec, y0: np.ndarray, times: np.ndarray
) -> tuple[np.ndarray, dict[str, int]]:
    """LSODA with the fastest Python right-hand side: the true equations as scalar Python
    code (sympy's lambdify, one float per state), its Jacobian likewise."""
    states = [sp.Symbol(s) for s in spec.states]
    values = {sp.Symbol(k): p.value for k, p in spec.parameters.items()}
    exprs = [e.xreplace(values) for e in spec.known_rhs()]
    f_code = sp.lambdify([states], exprs, "math")
    j_code = sp.lambdify([states], sp.Matrix(exprs).jacobian(states).tolist(), "math")
    count = {"f": 0, "J": 0}

    def f(_t, y):
        count["f"] += 1
        return f_code(y)

    def jac(_t, y):
        count["J"] += 1
        return j_code(y)

    sol = solve_ivp(
        f, (times[0], times[-1]), y0, "LSODA", t_eval=times, rtol=RTOL, atol=ATOL, jac=jac
    )
    return sol.y.T, count


def bench_system(name: str, quick: bool = False) -> dict[str, float]:
    system = get_system(name)
    sc = system.scenario
    times = np.linspace(sc.t_start, sc.t_end, sc.n_times)
    y0 = np.asarray(sc.initial[:1], dtype=float)
    ref, _ = scipy_run(system.truth, y0[0], times, "Radau", 1e-10, 1e-12)
    t = torch.from_numpy(times)
    print(f"\n{name}: t in [{times[0]:g}, {times[-1]:g}], {len(times)} output times, rtol {RTOL:g}")
    head = f"{'method':<20}{'pass':<18}{'cpu s':>8}{'x LSODA':>9}{'x fast':>8}{'f':>7}{'jac':>7}"
    print(head + f"{'rel err':>10}{'err/peak':>10}")
    out: dict[str, float] = {}

    def row(label, kind, seconds, work, sol):
        rel, peak = errors(sol, ref)
        ratios = f"{seconds / out['lsoda']:>9.2f}{seconds / out['lsoda_fast']:>8.2f}"
        print(f"{label:<20}{kind:<18}{seconds:>8.3f}{ratios}{work}{rel:>10.1e}{peak:>10.1e}")

    seconds, (sol, count) = cpu_seconds(lambda: scipy_fast(system.truth, y0[0], times))
    out["lsoda_fast"] = seconds
    for method in ("LSODA", "BDF", "Radau"):
        seconds, (sol_m, count_m) = cpu_seconds(
            lambda m=method: scipy_run(system.truth, y0[0], times, m, RTOL, ATOL)
        )
        out.setdefault("lsoda", seconds)
        work = f"{count_m['f']:>7d}{count_m['J']:>7d}"
        row(f"scipy {method}", "forward", seconds, work, sol_m)
    work = f"{count['f']:>7d}{count['J']:>7d}"
    row("scipy LSODA, fast f", "forward", out["lsoda_fast"], work, sol)
    model = twin(system.truth, y0, "rodas5p")
    start = time.process_time()
    ude_run(model, t, True)
    out["first_call"] = time.process_time() - start
    runs = [("rodas5p", "rodas5p", True), ("rodas5p_numpy", "rodas5p numpy", False)]
    if not quick:
        runs += [("rosenbrock23", "rosenbrock23", True), ("dopri5", "dopri5", True)]
    for key, label, compiled in runs:
        model = twin(system.truth, y0, label.split()[0])
        for backward in (False, True):
            seconds, (sol, work) = cpu_seconds(
                lambda b=backward, m=model, c=compiled: ude_run(m, t, b, c)
            )
            row(f"ude {label}", "forward+backward" if backward else "forward", seconds, work, sol)
            out[f"{key}_{'fb' if backward else 'f'}"] = seconds
    print(
        f"(rodas5p compiled: its first forward+backward in this process {out['first_call']:.2f}"
        " cpu s, loading or building numba's cache; the rows are the best of 3 after it)"
    )
    if quick:
        return out
    adams = twin(system.truth, y0, "implicit_adams")
    adams.solver = Solver("implicit_adams", step_size=ADAMS_STEP[name])
    label, kind = "td implicit_adams", f"fwd, h={ADAMS_STEP[name]:g}"
    try:
        seconds, (sol, work) = cpu_seconds(lambda: ude_run(adams, t, False))
    except SolverFailed as err:  # its functional iteration diverges on stiff steps
        print(f"{label:<20}{kind:<18}failed: {err}")
    else:
        row(label, kind, seconds, work, sol)
    return out


class EpochTimer(pl.Callback):
    """CPU seconds of each training epoch."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self._start = time.process_time()

    def on_train_epoch_end(self, trainer, module) -> None:
        self.seconds.append(time.process_time() - self._start)


def hybrid_conditions(name: str, n: int = 8) -> None:
    """The hybrid over the benchmark's ``n`` conditions, forward + backward: compiled (each
    condition its own steps, the default) against numpy (one shared step)."""
    problem = build_problem(Scenario(system=name, n_times=30, conditions=n))
    torch.set_default_dtype(F64)
    try:
        model = build_hybrid(problem.known, problem.measurements, Solver(problem.solver))
    finally:
        torch.set_default_dtype(torch.float32)
    with torch.no_grad():  # a network whose output matters (it starts near zero)
        for net in model.networks:
            last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
            last.weight.mul_(10.0)
    t = torch.tensor(problem.measurements.times, dtype=F64)
    compiled_s, _ = cpu_seconds(lambda: conditions_run(model, t, False))
    numpy_s, _ = cpu_seconds(lambda: conditions_run(model, t, True, compiled=False))
    print(
        f"{name:<18}hybrid, {n} conditions, forward+backward: compiled {compiled_s:.3f} cpu s, "
        f"numpy {numpy_s:.3f} cpu s ({numpy_s / compiled_s:.1f}x)"
    )


def ensemble_run(name: str, members: int = 4) -> None:
    """An ensemble of ``members`` hybrids (``model.ensemble``) over the base scenario's
    condition, forward + backward: compiled (each member's networks in the kernels) against
    the generic path (torch autograd through the steps), the ensembles' only path before."""
    problem = build_problem(Scenario(system=name, n_times=30))
    torch.set_default_dtype(F64)
    try:
        model = build_hybrid(
            problem.known, problem.measurements, Solver("rodas5p"), ensemble=members
        )
    finally:
        torch.set_default_dtype(torch.float32)
    t = torch.tensor(problem.measurements.times, dtype=F64)

    def run(compiled: bool) -> None:
        model.zero_grad()
        model._context = model.context(torch.arange(1))
        try:
            y0 = model.initial[:, :1].flatten(0, 1)
            sol = rodas_solve(model, y0, t, RTOL, ATOL, 5000, None, compiled)
        finally:
            model._context = None
        sol.sum().backward()

    compiled_s, _ = cpu_seconds(lambda: run(True))
    generic_s, _ = cpu_seconds(lambda: run(False), repeat_below=0.0)
    print(
        f"{name:<18}ensemble of {members}, forward+backward: compiled {compiled_s:.3f} cpu s, "
        f"generic {generic_s:.3f} cpu s ({generic_s / compiled_s:.0f}x)"
    )


def hybrid_epoch(name: str) -> float:
    """Forward + backward of the model a training run solves (known terms + an untrained
    network, the benchmark's base scenario: 30 times), and its training epochs (the
    untrained network's epochs: one cycle of 10, no warm start, as before ``ude.fit`` took
    ``python train.py``'s schedule; their median)."""
    from ude.fit import fit

    problem = build_problem(Scenario(system=name, n_times=30))
    torch.set_default_dtype(F64)
    try:
        model = build_hybrid(problem.known, problem.measurements, Solver(problem.solver))
    finally:
        torch.set_default_dtype(torch.float32)
    t = torch.tensor(problem.measurements.times, dtype=F64)
    seconds, (_, work) = cpu_seconds(lambda: ude_run(model, t, True))
    numpy_s, _ = cpu_seconds(lambda: ude_run(model, t, True, compiled=False))
    print(
        f"{name:<18}hybrid {problem.solver} forward+backward {seconds:.3f} cpu s (f, jac:{work}); "
        f"numpy {numpy_s:.3f} cpu s ({numpy_s / seconds:.1f}x)"
    )
    hybrid_conditions(name)
    ensemble_run(name)
    timer = EpochTimer()
    fit(
        problem.known,
        problem.measurements,
        solver=Solver(problem.solver),
        max_epochs=10,
        seed=0,
        trainer_kwargs={"callbacks": [timer]},
        **BARE_EPOCHS,
    )
    epoch = float(np.median(timer.seconds))
    print(f"{name:<18}training epoch {epoch:.3f} cpu s (median of 10, no warm start)")
    return epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="rodas5p (compiled and numpy) against scipy only: no rosenbrock23, dopri5, "
        "implicit_adams, hybrid model or training epochs",
    )
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {name: bench_system(name, args.quick) for name in args.systems}
    print()
    for name in args.systems:
        bench_conditions(name)
    epochs = {}
    if not args.quick:
        print()
        epochs = {name: hybrid_epoch(name) for name in args.systems}
    g = results.get("goldbeter")
    if g is None:
        return
    for floor, label in (("lsoda", "the same compiled f"), ("lsoda_fast", "a lambdified f")):
        others = [("rodas5p numpy", "rodas5p_numpy_fb")]
        if not args.quick:
            others += [("rosenbrock23", "rosenbrock23_fb"), ("dopri5", "dopri5_fb")]
        rest = ", ".join(f"{name} {g[key] / g[floor]:.1f}x" for name, key in others)
        print(
            f"\ntarget: Goldbeter forward+backward within 10x of LSODA's forward ({label}): "
            f"rodas5p {g['rodas5p_fb'] / g[floor]:.2f}x ({rest})",
            end="",
        )
    print()
    if "goldbeter" in epochs:
        print(f"target: a Goldbeter training epoch within 1 s: {epochs['goldbeter']:.2f} cpu s")


if __name__ == "__main__":
    main()
