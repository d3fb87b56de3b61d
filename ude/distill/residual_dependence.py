"""How many independent residuals a fit's data hold: the Laplace approximation's correction
for residuals that are not independent.

The Laplace approximation (:func:`ude.distill.uncertainty.laplace`) takes the data's precision
as the Hessian of a likelihood that treats every residual as independent. A twin that misses
part of the dynamics (a wrong structure, a corrupted known term it compensates) leaves
residuals that run in one direction for a stretch of time, and replicates that miss the
trajectory together: then the data hold fewer independent pieces of information than
entries, and a band from the independent Hessian is too narrow exactly where the twin is
wrong (Goldbeter with half its species unobserved: lag-one correlation 0.49, the band
covering 65 % of the truth without the correction, 85 % with it; a structure far from the
truth stays beyond any parameter band: yeast's form-corruption twin, 0.68, 23 % -> 25 %).

Two standard corrections, as a share ``factor`` of the entries that count (``n_eff / n``):

- *between replicates* (the design effect of clustered data): with ``R`` replicates per time
  whose residuals share a part, the standardised replicate mean's mean square is ``1 + (R - 1)
  ICC`` times the entries' own; its inverse is the share (1 without replicates);
- *serial* (an AR(1) process's effective sample size): the lag-one autocorrelation ``rho`` of
  the standardised replicate means along each condition's times, pooled over conditions and
  observables, gives ``(1 - rho) / (1 + rho)`` where it is positive.

The residuals are not centred: a twin that stays above the data for the whole span has
correlated errors, not a mean to subtract. Each correction applies only where its estimate is
beyond what independent residuals give by chance (:data:`Z`), so a correct twin keeps its
band: under independence ``rho`` scatters about 0 with a standard error of ``1/sqrt(pairs)``
and the mean-square ratio about 1 with ``sqrt(2/means)``; 30 time points would otherwise
widen a correct twin's band by about 10 % half of the time.

Observables with a noise model of their own (PEtab's log-normal, Laplace) are left out: their
residuals are not the Gaussian ones this reads. Without any Gaussian residual, or fewer than
:data:`MIN_PAIRS` consecutive pairs, the factor is 1."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ude.data.measurements import Measurements

MAX_RHO = 0.9
"""The serial correlation is capped here (a share of at least 0.053, standard deviations at
most 4.4 times the independent ones): beyond it the AR(1) form is not what a systematic
misfit is, and its estimate from tens of points is noise."""

Z = 2.0
"""A correction applies where its estimate exceeds its null value by this many of its null
standard errors (one-sided, about 2.3 % of independent data sets)."""

MIN_PAIRS = 5
"""Fewer consecutive pairs of measured times than this estimate nothing: no correction."""


@dataclass(frozen=True)
class ResidualDependence:
    """The estimates: ``serial``, the pooled lag-one autocorrelation of the standardised
    replicate means, from ``n_pairs`` consecutive pairs; ``ratio``, the replicate means' mean
    square over the entries' (1 without replicates), from ``n_means`` means."""

    serial: float
    n_pairs: int
    ratio: float = 1.0
    n_means: int = 0

    @property
    def serial_used(self) -> float:
        """``serial`` where it is beyond chance (:data:`Z`), capped at :data:`MAX_RHO`; else 0."""
        if self.n_pairs < MIN_PAIRS or self.serial < Z / np.sqrt(self.n_pairs):
            return 0.0
        return min(self.serial, MAX_RHO)

    @property
    def replicate_share(self) -> float:
        """``1 / ratio`` where the ratio is beyond chance (:data:`Z`), else 1."""
        if self.n_means == 0 or self.ratio <= 1.0 + Z * np.sqrt(2.0 / self.n_means):
            return 1.0
        return 1.0 / self.ratio

    @property
    def factor(self) -> float:
        """The share of the entries that count as independent, in ``(0, 1]``: the data's
        precision is multiplied by it."""
        rho = self.serial_used
        return float(self.replicate_share * (1.0 - rho) / (1.0 + rho))

    def as_dict(self) -> dict[str, float | int]:
        return {
            "serial_correlation": round(self.serial, 4),
            "replicate_ratio": round(self.ratio, 4),
            "effective_share": round(self.factor, 4),
        }


INDEPENDENT = ResidualDependence(serial=0.0, n_pairs=0)


@torch.no_grad()
def standardised_residuals(model, measurements: Measurements) -> np.ndarray:
    """``(condition, time, replicate, observable)`` residuals over their noise level (the data's
    sigma where given, else the model's learned noise), NaN where nothing was measured and for
    observables with a noise model of their own."""
    from ude.distill.refit import _batch
    from ude.fit import make_module

    module = make_module(model, measurements, loss="nll")
    batch = _batch(measurements)
    cond = batch["condition"]
    states, _ = module.trajectory(cond)
    pred = model.observe(states, cond)
    sigma = torch.where(batch["sigma"] > 0, batch["sigma"], model.noise)
    r = (batch["values"] - pred[:, :, None, :]) / sigma
    keep = batch["mask"].bool()
    if model.has_noise_models:
        keep = keep & ~model._noise_given
    return torch.where(keep, r, torch.full_like(r, torch.nan)).cpu().numpy()


def dependence(residuals: np.ndarray) -> ResidualDependence:
    """:class:`ResidualDependence` of standardised ``residuals (condition, time, replicate,
    observable)`` (NaN: not measured)."""
    measured = np.isfinite(residuals)
    count = measured.sum(axis=2)  # (condition, time, observable)
    if not measured.any():
        return INDEPENDENT
    total = np.where(measured, residuals, 0.0).sum(axis=2)
    # the replicate mean times sqrt(count): unit variance when the replicates are independent
    z = np.where(count > 0, total / np.sqrt(np.maximum(count, 1)), np.nan)
    ratio, n_means = 1.0, 0
    if count.max() > 1:
        entries = float(np.nanmean(residuals**2))
        if entries > 0:
            ratio, n_means = float(np.nanmean(z**2)) / entries, int(np.isfinite(z).sum())
    lagged, square, pairs = 0.0, 0.0, 0
    for c in range(z.shape[0]):
        for o in range(z.shape[2]):
            x = z[c, :, o]
            x = x[np.isfinite(x)]  # consecutive measured times, in time order
            if len(x) < 2:
                continue
            lagged += float(np.sum(x[1:] * x[:-1]))
            square += float(np.sum(x * x))
            pairs += len(x) - 1
    serial = lagged / square if square > 0 else 0.0
    return ResidualDependence(serial=serial, n_pairs=pairs, ratio=ratio, n_means=n_means)


def residual_dependence(model, measurements: Measurements) -> ResidualDependence:
    """The :class:`ResidualDependence` of ``model``'s residuals on ``measurements`` (at its
    current parameter values)."""
    return dependence(standardised_residuals(model, measurements))
