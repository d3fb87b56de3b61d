"""One Lotka-Volterra benchmark cell (ude with distill.uq=fast, as benchmark.py runs it): the
structure-averaged band's coverage of the held-out true forecast and its width, with the
structure bootstrap's resample-averaged weights (distill.uq.mixture.weights=bootstrap) and
with the evidence weights (=evidence), the same draws otherwise. Printed, not asserted.

    OMP_NUM_THREADS=1 python bench/uq_weights.py conditions=2      # or noise=0.3, n_times=50 ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from ude.benchmark.methods import UDE
    from ude.benchmark.metrics import band_width, interval_coverage
    from ude.benchmark.scenario import Scenario, build_problem
    from ude.distill.cli import make_mixture

    axes = dict(a.split("=") for a in sys.argv[1:])
    axes = {k: float(v) if k == "noise" else int(v) for k, v in axes.items()}
    problem = build_problem(Scenario(system="lotka_volterra", seed=0, n_times=30, **axes))
    store = {}
    real = UDE.uncertainty

    def grab(self, cfg, distilled, problem, initial, info):
        store.update(cfg=cfg, distilled=distilled, initial=initial)
        return real(self, cfg, distilled, problem, initial, info)

    UDE.uncertainty = grab
    fitted = UDE(["distill.uq=fast"]).fit(problem)
    mixture = make_mixture(store["cfg"].distill)
    truth = problem.true_forecast()
    observed = [s for s in problem.observed if s in fitted.forecast_states]
    true_cols = [problem.truth.states.index(s) for s in observed]
    cols = [fitted.forecast_states.index(s) for s in observed]
    for weights in ("bootstrap", "evidence"):
        mixture.weights = weights
        band = mixture.band(
            store["distilled"],
            problem.measurements,
            problem.forecast_times,
            store["initial"][None],
            [0],
        )
        lo, hi = band.state_lower[0][:, cols], band.state_upper[0][:, cols]
        top = [(round(c["weight"], 3), c["discovered"]) for c in band.components[:4]]
        print(
            f"{axes} {weights}: coverage {interval_coverage(lo, hi, truth[:, true_cols]):.3f}, "
            f"width {band_width(lo, hi, truth[:, true_cols]):.3f}, bounded "
            f"{np.isfinite(lo).all(1).mean():.3f}; heaviest structures {top}",
            flush=True,
        )


if __name__ == "__main__":
    main()
