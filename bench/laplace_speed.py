"""The Laplace approximation and forecast band of a stiff twin: each new path against the one
it replaced, in one run.

    OMP_NUM_THREADS=1 python bench/laplace_speed.py                  # 1 and 8 conditions
    OMP_NUM_THREADS=1 python bench/laplace_speed.py --conditions 1   # about 7 minutes

The paths before take most of it: Goldbeter's double backward about 50 s with one condition,
its torch band about 150 s.

For Goldbeter and yeast glycolysis with 1 and 8 conditions (the benchmark's scenarios, 5 %
noise), the true model with every rate learned is refitted to the data by rodas5p (what a
distilled stiff twin is; where that refit fails, the model at the true values), and then:

- the Hessian of its summed NLL (the Fisher information and the Laplace approximation of
  every stiff twin): central differences of the compiled exact gradient on the accepted steps
  of the solve at the values (``hessian``, the default) against the double-backward pass
  through those steps in one vectorised backward (``BY_DIFFERENCES = False``, the path
  before); CPU seconds, their ratio, and the largest difference over the largest entry;
- the forecast band (200 Laplace draws over the forecast task's horizon, 10 times the
  data's): each draw solved alone by the compiled kernels (the default) against one torch
  solve of all draws, draw by draw when a draw fails it (the path before); CPU seconds, their
  ratio, failed draws (compiled / torch), and the largest difference of the band's ends over
  the state's range where both are finite. The torch path's draw-by-draw fallback had a tenth
  of the solver's step budget per draw: on Goldbeter's long forecast horizon that fails
  draws that do not blow up.

Nothing is asserted: the figures are printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ude.benchmark.scenario import Scenario, build_problem  # noqa: E402
from ude.distill import TwinRefit, uncertainty  # noqa: E402
from ude.distill.uncertainty import LaplaceInterval  # noqa: E402


def stiff_twin(system: str, conditions: int):
    """The true model of ``system``, its rates learned, refitted by rodas5p to the data of the
    benchmark's scenario with ``conditions`` conditions; the problem beside it."""
    problem = build_problem(Scenario(system, conditions=conditions, seed=0))
    truth = problem.truth
    learned = {k: replace(p, learn=True) for k, p in truth.parameters.items()}
    spec = replace(truth, parameters=learned)
    result = TwinRefit(max_iter=60, method="rodas5p").fit(spec, problem.measurements)
    if not result.ok:  # the refit left the region where the model solves: the true values
        result = TwinRefit(max_iter=0, method="rodas5p").fit(spec, problem.measurements)
        print(f"({system}, {conditions} conditions: at the true values, the refit failed)")
    return result.model, problem


def cpu(f):
    start = time.process_time()
    out = f()
    return out, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| system | conditions | entries | Hessian: differences, s | double backward, s | ratio "
          "| max diff / max | band: compiled draws, s | torch solve, s | ratio | failed draws "
          "| max diff / range |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for system in ("goldbeter", "yeast_glycolysis"):
        for conditions in args.conditions:
            model, problem = stiff_twin(system, conditions)
            data = problem.measurements
            uncertainty.hessian(model, data)  # numba's cache loaded, the first solve done
            (_, fast), t_fast = cpu(lambda: uncertainty.hessian(model, data))  # noqa: B023
            uncertainty.BY_DIFFERENCES = False
            (_, slow), t_slow = cpu(lambda: uncertainty.hessian(model, data))  # noqa: B023
            uncertainty.BY_DIFFERENCES = True
            h_diff = np.abs(fast - slow).max() / np.abs(slow).max()
            n = len(fast)

            idx = [problem.truth.states.index(s) for s in model.spec.states]
            initial = problem.forecast_initial[idx][None]
            interval = LaplaceInterval(n_samples=200, seed=0)

            def band():
                return interval.forecast(model, data, problem.forecast_times, initial, [0])  # noqa: B023

            compiled, t_compiled = cpu(band)
            real = uncertainty._compiles
            uncertainty._compiles = lambda ready, solver: False
            by_torch, t_torch = cpu(band)
            uncertainty._compiles = real
            span = np.ptp(problem.true_forecast(), axis=0)
            gaps = []
            for a, b in ((compiled.lower, by_torch.lower), (compiled.upper, by_torch.upper)):
                both = np.isfinite(a) & np.isfinite(b)
                gaps.append(np.where(both, np.abs(np.where(both, a - b, 0.0)) / span, np.nan))
            gaps = np.concatenate([g.ravel() for g in gaps])
            b_diff = np.nanmax(gaps) if np.isfinite(gaps).any() else None
            print(
                f"| {system} | {conditions} | {n} | {t_fast:.3f} | {t_slow:.3f} | "
                f"{t_slow / t_fast:.0f}x | {h_diff:.1e} | {t_compiled:.3f} | {t_torch:.3f} | "
                f"{t_torch / t_compiled:.0f}x | {compiled.n_failed} / {by_torch.n_failed} | "
                f"{'no finite band to compare' if b_diff is None else f'{b_diff:.1e}'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
