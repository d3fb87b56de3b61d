"""What the residual-dependence correction of the Laplace band (ude/distill/residual_dependence.py)
does to its coverage of the true trajectory, with the correction and without it (the residuals
taken as independent), over noise seeds:

- *wrong structure*: data from a saturating clearance x' = -V x / (K + x) (V 1, K 0.5, x0 4),
  refitted as a first-order decay x' = -k x, which misses the saturation: its residuals run
  in one direction for stretches;
- *right structure*: data from the decay x' = -0.5 x itself, refitted as the decay: the
  correction should leave its band as it was.

Data: 5 % noise (of x0) at 30 times on [0, 4]; the band (200 draws) is scored on 41 times over
[0, 8], the data's window and as far again. Printed, not asserted.

    python bench/residual_dependence.py [n_seeds]
"""

from __future__ import annotations

import sys

import numpy as np

import ude.distill.uncertainty as uncertainty
from ude.data import Measurements
from ude.distill import TwinRefit
from ude.distill.residual_dependence import INDEPENDENT, residual_dependence
from ude.distill.uncertainty import LaplaceInterval
from ude.spec import ModelSpec, simulate_spec

TIMES = np.linspace(0, 4, 30)
GRID = np.linspace(0, 8, 41)
X0, SIGMA = 4.0, 0.05 * 4.0

SATURATING = ModelSpec.from_dict(
    {
        "states": ["x"],
        "parameters": {"V": {"value": 1.0}, "K": {"value": 0.5}},
        "equations": {"x": "-V*x/(K + x)"},
    }
)
DECAY_TRUTH = ModelSpec.from_dict(
    {"states": ["x"], "parameters": {"k": {"value": 0.5}}, "equations": {"x": "-k*x"}}
)
DECAY = ModelSpec.from_dict(
    {
        "states": ["x"],
        "parameters": {"k": {"value": 0.3, "learn": True}},
        "equations": {"x": "-k*x"},
    }
)


def data(truth: ModelSpec, seed: int) -> tuple[Measurements, np.ndarray]:
    """Noisy measurements of ``truth`` from x0 and its true trajectory on :data:`GRID`."""
    rng = np.random.default_rng(seed)
    clean = simulate_spec(truth, np.array([[X0]]), TIMES)[0, :, 0]
    values = clean + SIGMA * rng.standard_normal(len(TIMES))
    measured = Measurements(
        times=TIMES, values=values[None, :, None, None], observables=["x"], conditions=["c0"]
    )
    return measured, simulate_spec(truth, np.array([[X0]]), GRID)[0, :, 0]


def scored(model, measured: Measurements, truth: np.ndarray) -> tuple[float, float]:
    """Coverage of the true trajectory and mean width (over x0) of the 95 % band."""
    band = LaplaceInterval(n_samples=200, seed=0).forecast(model, measured, GRID)
    lower, upper = band.lower[0, :, 0], band.upper[0, :, 0]
    inside = (truth >= lower) & (truth <= upper)
    return float(inside.mean()), float(np.mean(upper - lower) / X0)


def main(n_seeds: int) -> None:
    corrected = uncertainty.residual_dependence
    print(f"{n_seeds} seeds, 95 % Laplace band, coverage of the true trajectory on [0, 8]")
    print("case             | correction | coverage | width (of x0) | effective share")
    for name, truth in (("wrong structure", SATURATING), ("right structure", DECAY_TRUTH)):
        rows = {"on": [], "off": []}
        shares = []
        for seed in range(n_seeds):
            measured, true_x = data(truth, seed)
            model = TwinRefit(max_iter=100).fit(DECAY, measured).model
            shares.append(residual_dependence(model, measured).factor)
            for label, fn in (("on", corrected), ("off", lambda *_: INDEPENDENT)):
                uncertainty.residual_dependence = fn
                uncertainty._LAPLACE.clear()
                rows[label].append(scored(model, measured, true_x))
            uncertainty.residual_dependence = corrected
        for label in ("off", "on"):
            cov, width = np.mean(rows[label], axis=0)
            share = f"{np.mean(shares):.3f} (min {min(shares):.3f})" if label == "on" else "1"
            print(f"{name:16s} | {label:10s} | {cov:8.3f} | {width:13.4f} | {share}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
