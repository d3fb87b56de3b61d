"""Likelihood + gradient of the PEtab SciML conformance LV case (001: a network in the
right-hand side) at its nominal parameters: time per call after the first, and the gradient
against central finite differences.

    PYTHONPATH=. python bench/petab_speed.py [--case 001] [--repeats 20] [--rtol 1e-8]

Target (issue 17): <= 10 ms per likelihood + gradient on 2 cores. Prints the measured time,
the time of the likelihood alone (the gradient's cost as a ratio), and the largest relative
difference between the autograd and the finite-difference gradient of the mechanistic
parameters.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ude.model.solver import Solver
from ude.petab import PetabModel, load_problem

CASES = (
    Path(__file__).resolve().parents[1] / "tests/data/petab_sciml_testsuite/sciml_problem_import"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", default="001")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rtol", type=float, default=1e-8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problem = load_problem(CASES / args.case / "petab" / "problem.yaml")
    solver = Solver("dopri5", rtol=args.rtol, atol=args.rtol * 1e-2, max_steps=1_000_000)
    model = PetabModel(problem, solver=solver)
    model.gradient()  # the first call
    start = time.perf_counter()
    for _ in range(args.repeats):
        value, mech, _ = model.gradient()
    both = (time.perf_counter() - start) / args.repeats
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(args.repeats):
            model.forward()
    alone = (time.perf_counter() - start) / args.repeats
    worst = 0.0
    for i, q in enumerate(model.estimated):
        h = 1e-5 * max(1.0, abs(float(model.theta[i])))
        with torch.no_grad():
            model.theta[i] += h
            up = float(model.forward())
            model.theta[i] -= 2 * h
            down = float(model.forward())
            model.theta[i] += h
        fd = (up - down) / (2 * h)
        worst = max(worst, abs(fd - mech[q]) / max(abs(fd), 1e-12))
        print(f"  d llh / d {q}: autograd {mech[q]:.6g}, finite difference {fd:.6g}")
    print(
        f"case {args.case}: llh {value:.6f}; llh + gradient {both * 1e3:.1f} ms per call "
        f"(target <= 10 ms), llh alone {alone * 1e3:.1f} ms (gradient costs "
        f"{both / alone:.2f}x); gradient vs finite differences: max relative difference "
        f"{worst:.2e} (rtol {args.rtol:g}, {args.threads} threads)"
    )


if __name__ == "__main__":
    main()
