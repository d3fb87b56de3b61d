"""The Laplace Hessian of a stiff twin with several conditions: each condition's initial-state
rows from that condition solved alone on the whole data's steps (the default) against every
row from the whole data's gradient (``uncertainty.BY_CONDITION = False``, the path before
893c902), in one run.

    OMP_NUM_THREADS=1 python bench/hessian_conditions.py                # about 2 minutes
    OMP_NUM_THREADS=1 python bench/hessian_conditions.py --rates fixed  # the rates at the truth

For yeast glycolysis and Goodwin with 1, 2, 4 and 8 conditions (the benchmark's scenarios,
5 % noise), the true model with every rate learned, refitted by rodas5p
(``bench/laplace_speed.py``'s ``stiff_twin``; Goldbeter's refit with every rate learned fails
to solve from 2 conditions on, and its Hessian then falls back to the double-backward pass):
CPU seconds of each Hessian, their ratio, the largest difference over the largest entry, and
the largest relative difference of the Laplace standard deviations (the square roots of the
pseudo-inverse's diagonal). One condition has nothing to split: the same path twice.
``--rates fixed``: the rates held at the truth's, the initial states and noise levels refitted
(a distilled twin learns a few rates and many initial states).
Nothing is asserted: the figures are printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from laplace_speed import stiff_twin  # noqa: E402

from ude.benchmark.scenario import Scenario, build_problem  # noqa: E402
from ude.distill import TwinRefit, uncertainty  # noqa: E402


def timed_hessian(model, data) -> tuple[np.ndarray, float]:
    start = time.process_time()
    _, H = uncertainty.hessian(model, data)
    return H, time.process_time() - start


def sds(H: np.ndarray) -> np.ndarray:
    return np.sqrt(np.abs(np.diag(np.linalg.pinv(H))))


def fixed_rates_twin(system: str, conditions: int):
    """The true model of ``system``, its rates held, refitted by rodas5p (initial states and
    noise levels) to the data of the benchmark's scenario; the problem beside it."""
    problem = build_problem(Scenario(system, conditions=conditions, seed=0))
    result = TwinRefit(max_iter=60, method="rodas5p").fit(problem.truth, problem.measurements)
    return result.model, problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", choices=["learned", "fixed"], default="learned")
    args = parser.parse_args()
    twin = stiff_twin if args.rates == "learned" else fixed_rates_twin
    torch.set_num_threads(1)
    print("| system | conditions | entries | by condition, s | whole data, s | ratio "
          "| max diff / max | max sd diff, relative |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for system in ("yeast_glycolysis", "goodwin"):
        for conditions in (1, 2, 4, 8):
            model, problem = twin(system, conditions)
            data = problem.measurements
            uncertainty.hessian(model, data)  # numba's cache loaded, the first solve done
            split, t_split = timed_hessian(model, data)
            uncertainty.BY_CONDITION = False
            try:
                whole, t_whole = timed_hessian(model, data)
            finally:
                uncertainty.BY_CONDITION = True
            diff = np.abs(split - whole).max() / np.abs(whole).max()
            a, b = sds(split), sds(whole)
            sd_diff = np.max(np.abs(a - b) / np.maximum(b, 1e-300))
            print(
                f"| {system} | {conditions} | {len(split)} | {t_split:.2f} | {t_whole:.2f} | "
                f"{t_whole / t_split:.1f}x | {diff:.1e} | {sd_diff:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
