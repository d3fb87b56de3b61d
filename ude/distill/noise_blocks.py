"""Noise that differs between conditions: the Laplace approximation's sandwich correction.

The likelihood a twin is refitted with has one noise level per observable, shared by every
condition. Experiments are rarely that even: a condition with other doses or initial amounts
spans another range, another day's assay scatters more. Its estimate stays consistent, but
the Laplace approximation's precision (the Hessian ``H`` of that likelihood) is then not the
inverse of the estimate's covariance. With each block of entries (a condition's series of one
observable) scattering ``s_b`` times the variance the likelihood assumed, the score's
variance is ``B = sum_b s_b H_b`` and the estimate's covariance the sandwich
``H^-1 B H^-1`` (Huber 1967; White 1982; in a Bayesian posterior: Mueller 2013, Econometrica
81:1805). :func:`sandwich_precision` gives its inverse, ``H B^-1 H``, which the Laplace
approximation takes as the data's precision; ``B`` is the Hessian of the likelihood with each
block's noise level scaled by ``1 / sqrt(s_b)`` (:func:`weighted_measurements`).

Measured (``python bench/noise_blocks.py``): yeast glycolysis' true structure with ``k5``
free, refitted on the benchmark's 8 conditions, whose noise is 5 % of each condition's own
range (block ratios 0.02-2.8): the sandwich's standard deviation of ``k5`` is 1.09 times the
Hessian's (0.00108 against 0.00099) and equals the linearised sandwich with the true noise
levels (0.00110 on seed 0); the estimator's own spread over 500 noise seeds, linearised at the
truth (correlation 0.9994 with 20 refits), is 0.00105.

``s_b`` is the block's mean square standardised residual over its observable's pooled one
(:func:`noise_blocks`), so one condition leaves everything as it was. The correction only
widens: along directions where the sandwich is more precise than the Hessian (the noisier
series carrying less of the information) the Hessian's precision stays, since the ratios come
from the same residuals and two or four conditions estimate them loosely (the benchmark's
Goodwin cell with 2 conditions, whose twin is exact: its band covered 1.00 of the truth with
the Hessian's precision, 0.82 narrowed by the sandwich). The correction applies
only where the ratios scatter beyond what even noise gives by chance (:data:`Z` null standard
errors of their chi-square dispersion), so data whose conditions share one noise level keep
their band; blocks of fewer than :data:`MIN_ENTRIES` entries count as ratio 1. Observables
with a noise model of their own (PEtab's) are left out, as in
:mod:`ude.distill.residual_dependence`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ude.data.measurements import Measurements

MIN_ENTRIES = 5
"""A block with fewer measured entries than this estimates nothing: its ratio is 1."""

Z = 2.0
"""The ratios' dispersion must exceed its chi-square null mean by this many null standard
errors (one-sided) for the correction to apply."""


@dataclass(frozen=True)
class NoiseBlocks:
    """``ratios (condition, observable)``: each block's mean square standardised residual over
    its observable's pooled one (1 where it is not a block of its own: too few entries, a noise
    model, a single condition); ``n_blocks``: the blocks compared (those of observables with
    two or more); ``dispersion`` and ``df``: the chi-square statistic of the ratios and its
    degrees of freedom (blocks less those observables)."""

    ratios: np.ndarray = field(default_factory=lambda: np.ones((0, 0)))
    dispersion: float = 0.0
    df: int = 0
    n_blocks: int = 0

    @property
    def applies(self) -> bool:
        """Whether the ratios scatter beyond chance (:data:`Z`)."""
        return self.df > 0 and self.dispersion > self.df + Z * np.sqrt(2.0 * self.df)

    def as_dict(self) -> dict[str, float | int | bool]:
        used = self.ratios[self.ratios != 1.0] if self.ratios.size else self.ratios
        return {
            "blocks": self.n_blocks,
            "min_ratio": round(float(used.min()), 4) if used.size else 1.0,
            "max_ratio": round(float(used.max()), 4) if used.size else 1.0,
            "applied": bool(self.applies),
        }


EVEN = NoiseBlocks()


def noise_blocks(residuals: np.ndarray) -> NoiseBlocks:
    """:class:`NoiseBlocks` of standardised ``residuals (condition, time, replicate,
    observable)`` (NaN: not measured or not Gaussian)."""
    n_cond, n_obs = residuals.shape[0], residuals.shape[-1]
    measured = np.isfinite(residuals)
    count = measured.sum(axis=(1, 2))  # (condition, observable)
    square = np.where(measured, residuals**2, 0.0).sum(axis=(1, 2))
    ratios = np.ones((n_cond, n_obs))
    dispersion, df, n_blocks = 0.0, 0, 0
    for o in range(n_obs):
        blocks = np.flatnonzero(count[:, o] >= MIN_ENTRIES)
        if len(blocks) < 2:
            continue
        pooled = square[blocks, o].sum() / count[blocks, o].sum()
        if not pooled > 0:
            continue
        s = square[blocks, o] / count[blocks, o] / pooled
        ratios[blocks, o] = s
        # each block's mean square is pooled * chi2_n / n under one noise level: variance 2/n
        dispersion += float(np.sum(count[blocks, o] / 2.0 * (s - 1.0) ** 2))
        df += len(blocks) - 1
        n_blocks += len(blocks)
    return NoiseBlocks(ratios=ratios, dispersion=dispersion, df=df, n_blocks=n_blocks)


@torch.no_grad()
def weighted_measurements(model, measurements: Measurements, blocks: NoiseBlocks) -> Measurements:
    """``measurements`` with every entry's noise level given: the one the refit used (the data's
    sigma where given, else the model's learned noise) over ``sqrt`` of its block's ratio. The
    Hessian of the likelihood on them is the score's variance ``B``; the learned noise levels
    no longer enter it (their rows are taken from the plain Hessian)."""
    noise = model.noise.detach().cpu().numpy()  # (observable,)
    given = measurements.sigma
    sigma = np.broadcast_to(noise, measurements.values.shape).copy()
    if given is not None:
        sigma = np.where(np.nan_to_num(given) > 0, given, sigma)
    sigma = sigma / np.sqrt(blocks.ratios)[:, None, None, :]
    return replace(measurements, sigma=sigma)


def sandwich_precision(H: np.ndarray, B: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """``H B^-1 H``, the inverse of the sandwich covariance ``H^-1 B H^-1``, for symmetric
    ``H`` and ``B (entry, entry)``, on the directions ``H`` bounds (eigenvalues above ``1e-8``
    of its largest; the others keep ``H``'s curvature). Whitened by ``H`` there, ``B`` is a
    matrix whose eigenvalues lie between the smallest and largest block ratio (``bounds``:
    ``B`` is a positive combination of the blocks' Hessians, ``H`` their sum); they are
    clipped to that range, which keeps the rounding of nearly flat directions out."""
    H = 0.5 * (H + H.T)
    if not len(H):
        return H
    lam, V = np.linalg.eigh(H)
    keep = lam > 1e-8 * max(float(np.abs(lam).max()), np.finfo(float).tiny)
    if not keep.any():
        return H
    Vk, root = V[:, keep], np.sqrt(lam[keep])
    W = (Vk.T @ (0.5 * (B + B.T)) @ Vk) / np.outer(root, root)
    mu, U = np.linalg.eigh(0.5 * (W + W.T))
    mu = np.clip(mu, *bounds)
    half = Vk * root
    corrected = half @ ((U / mu) @ U.T) @ half.T
    return H - (Vk * lam[keep]) @ Vk.T + corrected
