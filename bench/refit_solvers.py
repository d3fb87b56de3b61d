"""Which ODE solver the distillation's twin refits should use: rk4 on the data's grid, dopri5 or
ude's compiled Rodas5P, side by side in one run.

    OMP_NUM_THREADS=1 python bench/refit_solvers.py                      # the refits of the truth
    OMP_NUM_THREADS=1 python bench/refit_solvers.py --distill lotka_volterra enzyme

**The truth refitted.** For each system's benchmark base cell (5 % noise, seed 0), the true
model's rate constants are refitted from a start 30 % off each (log-normal, seeded), with the
true initial states as the start and the score refits' settings (300 L-BFGS iterations,
``criterion_tol`` 0.1), once per solver (rk4 as the score refits ran it until this bench:
with its fallback to Rodas5P at rtol 1e-4 where its solve fails at the start). Printed: the
seconds, the criterion's fit part (``n log NMSE``: lower is better; the same data, so
comparable across solvers), the largest relative difference of a fitted rate constant from
Rodas5P's (what the solver alone changes), and how far rk4 on the data's grid is from the
exact true trajectory (its largest error as a share of each state's range; the data's noise
is 0.05 of it).

**A distillation** (``--distill SYSTEM ...``): the cell's network is trained once as
``python train.py`` trains it, then distilled with the score refits and the final refit on each
solver, everything else the product's defaults: the seconds of the selection and of the whole
distillation, their ratio to rk4's, and whether the path (each refitted candidate's criterion
to 0.1, in order) and the twin are rk4's.

Nothing is asserted: the figures are printed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import sympy as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")

from ude.benchmark.methods import composed_config, train_as_train_py  # noqa: E402
from ude.benchmark.scenario import Scenario, build_problem, initial_states  # noqa: E402
from ude.distill.cli import make_distiller  # noqa: E402
from ude.distill.refit import TwinRefit  # noqa: E402
from ude.spec.model_spec import ModelSpec, Parameter  # noqa: E402
from ude.spec.simulate import simulate_spec  # noqa: E402
from ude.systems import get_system  # noqa: E402

SOLVERS = ("rk4", "dopri5", "rodas5p")
SYSTEMS = ("lotka_volterra", "seir", "goodwin", "enzyme", "competence")


def rk4_on_grid(spec: ModelSpec, initial: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Classic RK4 with one step per interval of ``times``: ``(condition, time, state)``."""
    values = {sp.Symbol(k): p.value for k, p in spec.parameters.items()}
    rhs = [spec.equations[s].xreplace(values) for s in spec.states]
    f = sp.lambdify([sp.symbols(spec.states)], rhs, "numpy")

    def g(y: np.ndarray) -> np.ndarray:
        return np.array(f(y), dtype=float)

    out = []
    for y in initial.astype(float):
        path = [y]
        for h in np.diff(times):
            k1 = g(y)
            k2 = g(y + h / 2 * k1)
            k3 = g(y + h / 2 * k2)
            k4 = g(y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            path.append(y)
        out.append(path)
    return np.array(out)


def grid_error(system: str) -> float:
    """The largest error of rk4 on the data's grid against the exact true trajectory, as a
    share of each state's range (inf where it blows up)."""
    problem = build_problem(Scenario(system, seed=0))
    init = initial_states(get_system(system), 1 if system != "enzyme" else 3)
    times = np.asarray(problem.measurements.times, dtype=float)
    exact = simulate_spec(problem.truth, init, times)
    with np.errstate(all="ignore"):
        grid = rk4_on_grid(problem.truth, init, times)
        span = exact.max(axis=1) - exact.min(axis=1)  # (condition, state)
        err = np.abs(grid - exact).max(axis=1) / np.where(span > 0, span, 1.0)
    return float(np.nanmax(np.where(np.isfinite(err), err, np.inf)))


def truth_refits(system: str, seed: int = 0) -> None:
    problem = build_problem(Scenario(system, seed=0))
    truth, data = problem.truth, problem.measurements
    rng = np.random.default_rng(seed)
    start = {
        k: Parameter(p.value * float(np.exp(0.3 * rng.standard_normal())), learn=True)
        for k, p in truth.parameters.items()
    }
    twin = ModelSpec(**{**truth.__dict__, "parameters": start})
    init = initial_states(get_system(system), data.n_conditions)
    n = int(np.isfinite(data.values).sum())
    rows = {}
    for method in SOLVERS:
        refit = TwinRefit(max_iter=300, tol=1e-7, criterion_tol=0.1, method=method)
        t0 = time.perf_counter()
        result = refit.fit(twin, data, initial=init)
        rows[method] = (time.perf_counter() - t0, result)
    reference = rows["rodas5p"][1].values
    for method, (seconds, result) in rows.items():
        fit = n * math.log(result.nmse) if result.ok and result.nmse > 0 else math.inf
        apart = max(
            abs(float(result.values[k]) / float(reference[k]) - 1) for k in truth.parameters
        )
        print(f"| {system} | {method} | {seconds:.2f} | {fit:.1f} | {apart:.3g} |")


def distillations(system: str) -> None:
    torch.set_num_threads(1)
    problem = build_problem(Scenario(system, seed=0))
    t0 = time.perf_counter()
    model, _ = train_as_train_py(composed_config(problem, []), problem.known, problem.measurements)
    print(f"{system}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    print("| solver | selection, s | × rk4 | distillation, s | × rk4 | rk4's path and twin |")
    print("|---|---|---|---|---|---|")
    base = None
    for method in SOLVERS:
        overrides = [
            f"distill.distiller.score_refit.method={method}",
            f"distill.distiller.refit.method={method}",
            f"distill.distiller.refit.twin_method={method}",  # the twin keeps it, as before
        ]
        cfg = composed_config(problem, overrides)
        t0 = time.perf_counter()
        result = make_distiller(cfg.distill).fit(model, problem.measurements)
        total = time.perf_counter() - t0
        selection = result.timings["selection_seconds"]
        path = [(r["terms"], round(r["criterion"], 1)) for r in result.path_rows()]
        twin = {k: str(v) for k, v in result.twin.discovered.items()}
        base = base or (selection, total, path, twin)
        same = "path and twin" if (path, twin) == base[2:] else "twin" if twin == base[3] else "no"
        print(f"| {method} | {selection:.1f} | {base[0] / selection:.2f} | {total:.1f} | "
              f"{base[1] / total:.2f} | {same} |", flush=True)  # fmt: skip
        print(f"  twin: {twin}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS))
    parser.add_argument("--distill", nargs="*", default=[], metavar="SYSTEM")
    args = parser.parse_args()
    if not args.distill:
        print("| system | solver | seconds | n log NMSE | rate constants apart from rodas5p's |")
        print("|---|---|---|---|---|")
        for system in args.systems:
            truth_refits(system)
        for system in args.systems:
            print(f"{system}: rk4 on the data's grid errs by {grid_error(system):.3g} of a range")
    for system in args.distill:
        distillations(system)


if __name__ == "__main__":
    main()
