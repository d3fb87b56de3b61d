"""How far the selection's refits still move when they stop: one benchmark cell, its criterion
trace per refitted candidate, in one run.

    OMP_NUM_THREADS=1 python bench/refit_convergence.py                   # yeast, 4 conditions
    OMP_NUM_THREADS=1 python bench/refit_convergence.py --system goldbeter --conditions 8
    python bench/refit_convergence.py --conditions 8 --threads 2   # torch's default on 2 cores
    python bench/refit_convergence.py --conditions 8 --threads 2 --optimizer lbfgs

The network of the benchmark's cell (5 % noise, 30 time points, seed 0) is trained as
``python train.py`` trains it and distilled with the product's defaults. Each candidate the
selection refitted keeps its refit's trace (:class:`ude.distill.refit.RefitResult`: twice the
summed NLL at the end of each L-BFGS step of 20 iterations). Printed per candidate, in the
order the selection scored them: its criterion, the refit's iterations and how much its
criterion fell over its last 20 iterations and its last 100 ("–": a refit of 100 or fewer).
The refit stops when 20 iterations move the criterion by less than ``criterion_tol``; one
whose last 20 still moved it by more was stopped by its iteration cap
(``distill.distiller.score_refit.max_iter``), and one whose last 100 moved it by more than
the selection's ``tolerance`` was stopped far from its optimum: the selection compared it
unconverged. The summary counts both, beside the selection's and the distillation's time.

With several conditions the product's refits end with Gauss-Newton steps (``--optimizer``,
default ``auto``), and each of those adds one entry to the trace, not one per 20 iterations:
there the two "fall" columns count a Gauss-Newton step as 20 iterations. ``--optimizer lbfgs``
gives every refit L-BFGS's trace.

Nothing is asserted: the figures are printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")

from ude.benchmark.methods import composed_config, train_as_train_py  # noqa: E402
from ude.benchmark.scenario import Scenario, build_problem  # noqa: E402
from ude.distill.cli import make_distiller  # noqa: E402

LATE = 5
"""L-BFGS steps of 20 iterations over which a refit's late fall is measured (100 iterations)."""


def late_fall(trace: list[float], steps: int = LATE) -> float | None:
    """How much the criterion fell over the last ``steps`` L-BFGS steps (None for a refit of
    no more steps than that)."""
    if len(trace) <= steps:
        return None
    return trace[-1 - steps] - trace[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="yeast_glycolysis")
    parser.add_argument("--conditions", type=int, default=4)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch's threads (the benchmark's cells: 1)"
    )
    parser.add_argument(
        "--optimizer",
        choices=("auto", "lbfgs", "gauss_newton"),
        help="the scoring refits' (distill.distiller.score_refit.optimizer; default: the "
        "product's, auto; lbfgs: the selection before 7538292)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problem = build_problem(Scenario(args.system, n_times=30, conditions=args.conditions))
    overrides = []
    if args.optimizer:
        overrides.append(f"distill.distiller.score_refit.optimizer={args.optimizer}")
    cfg = composed_config(problem, overrides)
    selector = cfg.distill.distiller.selector
    cap = cfg.distill.distiller.score_refit.max_iter
    criterion_tol = cfg.distill.distiller.score_refit.criterion_tol
    start = time.perf_counter()
    model, _ = train_as_train_py(cfg, problem.known, problem.measurements)
    print(f"{args.system}, {args.conditions} conditions: trained in "
          f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
    start = time.perf_counter()
    result = make_distiller(cfg.distill).fit(model, problem.measurements)
    total = time.perf_counter() - start
    twin = ", ".join(f"{k}: {v}" for k, v in result.twin.discovered.items())
    selection = result.timings["selection_seconds"]
    print(f"distilled in {total:.0f} s (selection {selection:.0f} s); twin: {twin}\n")
    print("| candidate | criterion | iterations | fall, last 20 | fall, last 100 |")
    print("|---|---|---|---|---|")
    last, late = [], []
    for row, scored in zip(result.path_rows(), result.path, strict=True):
        trace = scored.refit.trace
        fall = late_fall(trace)
        last.append(late_fall(trace, 1) or 0.0)
        late.append(fall or 0.0)
        fall = "–" if fall is None else f"{fall:.2f}"
        terms = "; ".join(f"{k}: {v}" for k, v in row["terms"].items())
        print(f"| {terms} | {scored.criterion:.1f} | {scored.refit.iterations} | "
              f"{last[-1]:.2f} | {fall} |")  # fmt: skip
    last, late = np.array(last), np.array(late)
    print(f"\n{len(last)} refitted candidates (iteration cap {cap}, criterion_tol "
          f"{criterion_tol:g}). Still moving when stopped (last 20 iterations > criterion_tol): "
          f"{int((last > criterion_tol).sum())}; far from their optimum (last 100 > the "
          f"selection's tolerance, {selector.tolerance:g}): "
          f"{int((late > selector.tolerance).sum())}; median fall over the last 100: "
          f"{np.median(late):.2f}.")  # fmt: skip


if __name__ == "__main__":
    main()
