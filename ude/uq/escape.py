"""Draws that blow up, kept in a band: when each draw's trajectory stops being trusted, and the
band's quantiles with the escaped draws counted (the rule of :mod:`ude.uq.mixture`, shared by
the Laplace band of :mod:`ude.distill.uncertainty` and the hybrid ensemble's band).

A band that dropped the draws whose solve failed would describe the draws that happened to
solve: narrower exactly where the parameters are least certain. Here an escaped draw counts
as a draw outside the band: with a share ``e`` escaped at a time, the band is the central
``level / (1 - e)`` interval of the others, which holds at least ``level`` of all draws
wherever the escaped ones are, and it is unbounded (``±inf``) once ``e > 1 - level``.
"""

from __future__ import annotations

import numpy as np


def escape_index(states: np.ndarray, failed: np.ndarray) -> np.ndarray:
    """``(sample, condition)``: the first output time index from which a draw's trajectory
    ``states (sample, condition, time, state)`` is not to be trusted (the number of times:
    all of it is). A non-finite value escapes at once (a draw whose solve failed outright is
    all nan: index 0). A failed draw (``failed (sample,)``) whose row the solve froze
    (:class:`ude.model.doses.RowsRHS` stops a row that leaves its bound: its outputs are then
    exactly constant) escapes one output before its constant tail begins, since the solver
    step in which it died also shaped the output before; a failed draw with no frozen or
    non-finite row died in the last interval."""
    n_s, n_c, n_t, _ = states.shape
    finite = np.isfinite(states).all(-1)  # (sample, condition, time)
    out = np.where(finite.all(-1), n_t, np.argmin(finite, axis=-1))
    same = (states == states[:, :, -1:, :]).all(-1) & finite  # a frozen row is finite
    # the constant tail's length: how many outputs at the end equal the last one
    tail = np.argmin(same[:, :, ::-1], axis=-1)
    tail = np.where(same.all(-1), n_t, tail)
    frozen = failed[:, None] & (tail >= 2)
    out = np.where(frozen, np.minimum(out, np.maximum(n_t - tail - 1, 0)), out)
    unexplained = failed & (out >= n_t).all(axis=1)
    out[unexplained] = n_t - 1
    return out


def escaped_quantiles(
    draws: np.ndarray, alive: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower, median and upper ``(condition, time, state)`` of ``draws (sample, condition,
    time, state)`` where ``alive (sample, condition, time)`` marks the draws not escaped: the
    central ``level / (1 - e)`` interval of the live draws, ``e`` the escaped share, so that
    it holds ``level`` of all draws wherever the escaped ones are; ``±inf`` where that share
    exceeds 1 (``e > 1 - level``), the median ``nan`` where ``e ≥ 1/2``."""
    n = draws.shape[0]
    live = alive.sum(axis=0)  # (condition, time)
    inner = level * n / np.maximum(live, 1)
    ordered = np.sort(np.where(alive[..., None], draws, np.nan), axis=0)  # nan last

    def at(q: np.ndarray) -> np.ndarray:
        # linear interpolation between order statistics, as np.quantile
        pos = np.clip(q, 0, 1) * np.maximum(live - 1, 0)
        i0 = np.floor(pos).astype(int)
        i1 = np.minimum(i0 + 1, np.maximum(live - 1, 0))
        frac = (pos - i0)[..., None]
        a = np.take_along_axis(ordered, i0[None, ..., None], axis=0)[0]
        b = np.take_along_axis(ordered, i1[None, ..., None], axis=0)[0]
        return a + frac * (b - a)

    bounded = (inner <= 1)[..., None] & (live > 0)[..., None]
    lower = np.where(bounded, at((1 - inner) / 2), -np.inf)
    upper = np.where(bounded, at((1 + inner) / 2), np.inf)
    median = np.where((2 * live > n)[..., None], at(np.full(live.shape, 0.5)), np.nan)
    return lower, median, upper


def unbounded_from(bounded: np.ndarray, times: np.ndarray) -> list[float | None]:
    """Per condition of ``bounded (condition, time)`` (where a band is finite), the first of
    ``times (time,)`` at which it is not (None: never)."""
    out = []
    for row in bounded:
        past = np.flatnonzero(~row)
        out.append(float(times[past[0]]) if len(past) else None)
    return out
