"""Backward elimination's cost per step: one QR factorisation of the support against a
least-squares solve per term (what it did before 82e0544), on generated libraries of the kind
the distillation builds (monomials to degree 3 and saturations of each input, 2 targets).

    OMP_NUM_THREADS=1 python bench/elimination_speed.py [--samples 1500]

Prints, per library size, the seconds of each way and whether they give the same supports.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

import ude.distill.sparse as sparse


def library(x: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Monomials of the columns of ``x`` to degree 3 and ``x_i / (K + x_i)`` for three K."""
    cols, names = [np.ones(len(x))], ["1"]
    for degree in (1, 2, 3):
        for combo in itertools.combinations_with_replacement(range(x.shape[1]), degree):
            cols.append(np.prod(x[:, combo], axis=1))
            names.append("*".join(f"x{i}" for i in combo))
    for i in range(x.shape[1]):
        for K in (0.3, 1.0, 3.0):
            cols.append(x[:, i] / (K + x[:, i]))
            names.append(f"x{i}/({K} + x{i})")
    return np.array(cols).T, names


def timed(problems: dict[str, sparse.Problem], cond: float) -> tuple[float, list]:
    saved = sparse.ONE_FACTORISATION_COND
    sparse.ONE_FACTORISATION_COND = cond
    try:
        start = time.process_time()
        found = sparse.EliminationPath().candidates(problems)
        return time.process_time() - start, found
    finally:
        sparse.ONE_FACTORISATION_COND = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1500)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(
        "inputs | terms | candidates | a solve per term, CPU s | one QR per step, CPU s | "
        "ratio | same supports"
    )
    for d in (3, 4, 5):
        x = np.abs(rng.normal(1.0, 0.5, size=(args.samples, d))) + 0.05
        theta, names = library(x)
        problems = {}
        for t in range(2):
            coef = np.zeros(theta.shape[1])
            coef[rng.choice(theta.shape[1], 3, replace=False)] = rng.normal(size=3)
            y = theta @ coef + 0.05 * rng.normal(size=len(x))
            problems[f"t{t}"] = sparse.Problem(theta, y, names)
        slow, by_solves = timed(problems, 0.0)  # every support costed by solves
        fast, by_qr = timed(problems, sparse.ONE_FACTORISATION_COND)
        same = all(a.support() == b.support() for a, b in zip(by_solves, by_qr, strict=True))
        print(
            f"{d} | {theta.shape[1]} | {len(by_qr)} | {slow:.2f} | {fast:.2f} | "
            f"{slow / max(fast, 1e-9):.1f} | {'yes' if same else 'NO'}"
        )


if __name__ == "__main__":
    main()
