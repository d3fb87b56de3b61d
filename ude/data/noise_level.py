"""The data's noise level, estimated from the data alone, without a model.

Each measured entry is compared with the straight line through its two neighbours in time
(the same condition and replicate): for a smooth curve that line passes within the curve's
curvature times the spacing squared, so what is left is mostly noise. The pseudo-residual
``e_i = a y_{i-1} + b y_{i+1} - y_i`` (``a``, ``b`` the interpolation weights of the uneven
spacing), scaled by ``1 / sqrt(a² + b² + 1)``, has the noise's variance where the curve is
straight (Gasser, Sargent & Schmidt 1986, "Residual variance and residual pattern in
nonlinear regression", Biometrika 73:625). Where the curve bends sharply between two samples
(a switch of an oscillator sampled a few times per period) the pseudo-residual holds the bend
as well; the median of the squares, over the median of a chi-square with one degree of
freedom (0.4549), is not moved by a few such points where the mean is (Goldbeter's ``M`` and
``X`` at 5 % noise, 30 points: 0.15 and 0.16 by the mean, 0.072 and 0.050 by the median,
the truth's 0.035 and 0.028). Where the curve bends between most samples the estimate is still
too large, never too small in expectation: a model judged against it is judged leniently.
"""

from __future__ import annotations

import numpy as np

from ude.data.measurements import Measurements

CHI2_1_MEDIAN = 0.45493642311957283
"""The median of a chi-square variable with one degree of freedom."""


def difference_variance(measurements: Measurements) -> np.ndarray:
    """``(observable,)``: each observable's noise variance from the median squared
    pseudo-residual of its series (every condition and replicate, measured entries only; a
    series needs three); NaN for an observable with no such series."""
    values = measurements.values  # (condition, time, replicate, observable)
    times = np.asarray(measurements.times, dtype=float)
    out = np.full(values.shape[-1], np.nan)
    for o in range(values.shape[-1]):
        pseudo = [
            pseudo_residuals(times[ok], series[ok])
            for series in values[..., o].transpose(0, 2, 1).reshape(-1, len(times))
            for ok in [np.isfinite(series)]
            if ok.sum() >= 3
        ]
        if pseudo:
            out[o] = float(np.median(np.concatenate(pseudo) ** 2)) / CHI2_1_MEDIAN
    return out


def pseudo_residuals(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The scaled pseudo-residuals ``(n - 2,)`` of one series ``y`` at increasing times ``t``."""
    h0, h1 = t[1:-1] - t[:-2], t[2:] - t[1:-1]
    a, b = h1 / (h0 + h1), h0 / (h0 + h1)
    e = a * y[:-2] + b * y[2:] - y[1:-1]
    return e / np.sqrt(a**2 + b**2 + 1)
