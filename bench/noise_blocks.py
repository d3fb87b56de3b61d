"""The Laplace approximation's calibration where the noise differs between conditions: the
sandwich correction (ude.distill.noise_blocks) against the plain Hessian, side by side.

    OMP_NUM_THREADS=1 python bench/noise_blocks.py                    # yeast, 8 conditions
    OMP_NUM_THREADS=1 python bench/noise_blocks.py --conditions 1 --seeds 10

For each noise seed, the benchmark's data for yeast glycolysis (5 % noise of each condition's
own range, 30 time points) are refitted with the true structure and ``k5`` (the rate the
benchmark leaves to a network) free, as the distillation's final refit does (initial states
learned, one noise level per observable). Printed per seed: the estimate, its Laplace
standard deviation with the sandwich and without, and their z scores; then over the seeds the
root mean square of each z (1 when the standard deviation is right), how many 95 % intervals
cover the true ``k5``, and the estimates' own spread beside the mean Laplace standard
deviations.

Twenty refits estimate a spread to within about 16 %; the spread itself is then measured over
``--linear-seeds`` noise seeds (default 500) with the estimator linearised at the truth (one
weighted least-squares step on the Jacobian of the observables, taken once by central
differences): printed with its correlation with the refits' estimates over the refitted seeds
(near 1: the linearisation is the estimator). Nothing is asserted: the figures are printed.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")

import ude.distill.uncertainty as uncertainty  # noqa: E402
from ude.benchmark.scenario import Scenario, build_problem  # noqa: E402
from ude.distill.refit import TwinRefit, _batch  # noqa: E402
from ude.fit import make_module  # noqa: E402
from ude.model.hybrid import build_hybrid  # noqa: E402
from ude.model.solver import Solver  # noqa: E402


def standard_deviation(model, measurements, name: str, sandwich: bool) -> tuple[float, dict]:
    """The Laplace standard deviation of ``name`` with the sandwich on or off, and the noise
    blocks' record."""
    uncertainty.SANDWICH = sandwich
    try:
        approx = uncertainty._laplace(model, measurements, 1e-8)
    finally:
        uncertainty.SANDWICH = True
    return approx.natural_std()[name], approx.noise_blocks.as_dict()


class Linearised:
    """The estimator of ``name`` linearised at the truth (``spec`` with ``name`` free, the true
    initial states): :meth:`estimate` of a data set's values ``(condition, time, replicate,
    observable)`` (its first replicate) is one weighted least-squares step on the Jacobian of
    the observables in every free entry but the noise, each observable weighted by its
    residuals' pooled sd, as the refit weighs it."""

    def __init__(self, spec, data, name: str):
        torch.set_default_dtype(torch.float64)
        model = build_hybrid(spec, data, Solver("rodas5p", 1e-8, 1e-10), learn_initial=True)
        with torch.no_grad():
            model.initial.copy_(torch.as_tensor(np.asarray(data.truth.initial, dtype=float)))
        module, batch = make_module(model, data, loss="nll"), _batch(data)
        params = [p for p in model.parameters() if p.requires_grad]
        names = uncertainty._parameter_names(model)
        entries = [i for i, n in enumerate(names) if not n.startswith("log_noise")]
        values = torch.nn.utils.parameters_to_vector(params).detach().clone()

        def observed(vector: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(vector, params)
                states, _ = module.trajectory(batch["condition"])
                return model.observe(states, batch["condition"]).cpu().numpy()

        self.at_truth = observed(values)
        columns = []
        for i in entries:
            step = 1e-6 * max(abs(float(values[i])), 1.0)
            up, down = values.clone(), values.clone()
            up[i] += step
            down[i] -= step
            columns.append(((observed(up) - observed(down)) / (2 * step)).reshape(-1))
        torch.nn.utils.vector_to_parameters(values, params)
        self.jacobian = np.array(columns).T
        self.row = [names[i] for i in entries].index(name)
        self.value = float(values[names.index(name)])

    def estimate(self, values: np.ndarray, sigma: np.ndarray | None = None) -> float:
        """The estimate from ``values``; ``sigma`` (shaped as ``values``): each entry's noise
        sd as the weights instead of the residuals' pooled sd per observable."""
        residual = values[:, :, 0, :] - self.at_truth
        if sigma is None:
            sd = np.sqrt(np.nanmean(residual**2, axis=(0, 1)))
        else:
            sd = sigma[:, :, 0, :]
        w = np.broadcast_to(1.0 / sd, residual.shape).reshape(-1)
        ok = np.isfinite(residual.reshape(-1))
        J, r = self.jacobian[ok] * w[ok, None], residual.reshape(-1)[ok] * w[ok]
        return self.value + float(np.linalg.lstsq(J, r, rcond=None)[0][self.row])


def problem(args: argparse.Namespace, seed: int):
    """The benchmark's cell for ``args``' system and conditions with noise seed ``seed``."""
    scenario = Scenario(
        system=args.system, seed=seed, noise=0.05, n_times=30, conditions=args.conditions
    )
    return build_problem(scenario)


def free_spec(truth, name: str):
    """The true spec with ``name`` learned."""
    spec = copy.deepcopy(truth)
    spec.parameters[name] = replace(spec.parameters[name], learn=True)
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="yeast_glycolysis")
    parser.add_argument("--parameter", default="k5")
    parser.add_argument("--conditions", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--linear-seeds", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, refitted_data = [], []
    for seed in range(args.seeds):
        cell = problem(args, seed)
        truth = cell.truth.parameters[args.parameter].value
        spec = free_spec(cell.truth, args.parameter)
        start = time.process_time()
        refit = TwinRefit(max_iter=400, tol=1e-10, method="rodas5p", rtol=1e-6, atol=1e-8)
        data = cell.measurements
        refitted_data.append(data.values)
        result = refit.fit(spec, data, np.asarray(data.truth.initial, dtype=float))
        estimate = result.values[args.parameter]
        plain, _ = standard_deviation(result.model, data, args.parameter, sandwich=False)
        sandwiched, blocks = standard_deviation(result.model, data, args.parameter, True)
        rows.append((estimate, plain, sandwiched))
        print(
            f"seed {seed:2d}  {args.parameter} {estimate:.6f} (true {truth})  sd plain "
            f"{plain:.3g} z {(estimate - truth) / plain:+.2f}  sandwich {sandwiched:.3g} z "
            f"{(estimate - truth) / sandwiched:+.2f}  block ratios {blocks['min_ratio']}-"
            f"{blocks['max_ratio']} applied {blocks['applied']}  "
            f"{time.process_time() - start:.0f} s CPU",
            flush=True,
        )
    est, plain, sandwiched = (np.array(c) for c in zip(*rows, strict=True))
    print(f"\n{args.system}, {args.conditions} conditions, {len(est)} seeds:")
    for label, sd in (("plain Hessian", plain), ("sandwich", sandwiched)):
        z = (est - truth) / sd
        print(
            f"  {label:13s}: rms z {np.sqrt(np.mean(z**2)):.2f}, 95 % intervals covering "
            f"the truth {int(np.sum(np.abs(z) <= 1.96))}/{len(z)}, mean sd {sd.mean():.3g}"
        )
    print(f"  the estimates' own sd {est.std(ddof=1):.3g}, mean error {est.mean() - truth:+.3g}")

    first = problem(args, 0)
    linear = Linearised(free_spec(first.truth, args.parameter), first.measurements, args.parameter)
    refitted = np.array([linear.estimate(values) for values in refitted_data])
    many = np.array(
        [linear.estimate(problem(args, s).measurements.values) for s in range(args.linear_seeds)]
    )
    print(
        f"  linearised at the truth: correlation with the refits' estimates "
        f"{np.corrcoef(refitted, est)[0, 1]:.4f}; its sd over seeds 0-{len(est) - 1} "
        f"{refitted.std(ddof=1):.3g}, over {args.linear_seeds} seeds {many.std(ddof=1):.3g}"
    )


if __name__ == "__main__":
    main()
