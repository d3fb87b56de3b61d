"""Convergence of several Markov chains: rank-normalised split R-hat and effective sample sizes
(bulk and tail), after Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-normalization,
folding, and localization: an improved R-hat for assessing convergence of MCMC", Bayesian Anal.
16:667. Every function takes draws ``(chain, sample)`` of one quantity.

- R-hat: each chain split in halves; the larger of the R-hat of the rank-normalised draws
  (bulk: location) and of the rank-normalised distances from the median (tail: scale).
- Bulk ESS: the effective sample size of the rank-normalised split chains (Geyer's initial
  monotone sequence on the chains' pooled autocorrelation).
- Tail ESS: the smaller ESS of the indicators of the 5 % and 95 % quantiles, the ends of a
  90 % interval, where a 95 % interval's ends live.

A series with no spread (a term pinned at exactly zero) has nothing to judge: R-hat 1, ESS the
number of draws.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri
from scipy.stats import rankdata


def _split(draws: np.ndarray) -> np.ndarray:
    """``(2 chain, sample // 2)``: each chain's halves (the middle draw of an odd length left
    out)."""
    half = draws.shape[1] // 2
    return np.concatenate([draws[:, :half], draws[:, -half:]])


def _rank_normal(draws: np.ndarray) -> np.ndarray:
    """The draws replaced by the normal scores of their pooled ranks (Blom's offsets)."""
    r = rankdata(draws, method="average").reshape(draws.shape)
    return ndtri((r - 3 / 8) / (draws.size + 1 / 4))


def _rhat(chains: np.ndarray) -> float:
    """Classic R-hat of ``(chain, sample)``: the pooled variance over the within-chain one."""
    n = chains.shape[1]
    within = chains.var(axis=1, ddof=1).mean()
    between = n * chains.mean(axis=1).var(ddof=1)
    return float(np.sqrt(((n - 1) / n * within + between / n) / within))


def _ess(chains: np.ndarray) -> float:
    """Effective sample size of ``(chain, sample)``: the chains' pooled autocorrelation summed
    over Geyer's initial monotone sequence of pair sums."""
    m, n = chains.shape
    centred = chains - chains.mean(axis=1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(centred, size, axis=1)
    acov = np.fft.irfft(spectrum * np.conj(spectrum), size, axis=1)[:, :n] / n
    within = acov[:, 0].mean() * n / (n - 1)
    var_plus = within * (n - 1) / n + (chains.mean(axis=1).var(ddof=1) if m > 1 else 0.0)
    rho = 1 - (within - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    pairs = rho[: n - n % 2].reshape(-1, 2).sum(axis=1)
    positive = np.flatnonzero(pairs <= 0)
    pairs = pairs[: positive[0]] if len(positive) else pairs
    pairs = np.minimum.accumulate(pairs)
    tau = max(-1 + 2 * pairs.sum(), 1 / np.log10(m * n))
    return float(m * n / tau)


def _constant(draws: np.ndarray) -> bool:
    return bool(np.ptp(draws) <= 1e-12 * max(np.abs(draws).max(), 1e-300))


def rhat(draws: np.ndarray) -> float:
    """Rank-normalised split R-hat of ``(chain, sample)``: the larger of bulk and tail."""
    if _constant(draws):
        return 1.0
    split = _split(draws)
    folded = np.abs(split - np.median(split))
    return max(_rhat(_rank_normal(split)), _rhat(_rank_normal(folded)))


def bulk_ess(draws: np.ndarray) -> float:
    """Effective sample size of ``(chain, sample)`` for the centre of the distribution."""
    if _constant(draws):
        return float(draws.size)
    return _ess(_rank_normal(_split(draws)))


def tail_ess(draws: np.ndarray) -> float:
    """Effective sample size of ``(chain, sample)`` for the 5 % and 95 % quantiles."""
    if _constant(draws):
        return float(draws.size)
    split = _split(draws)
    out = []
    for q in np.quantile(split, [0.05, 0.95]):
        below = (split <= q).astype(float)
        out.append(float(below.size) if _constant(below) else _ess(below))
    return min(out)
