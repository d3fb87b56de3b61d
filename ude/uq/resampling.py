"""Resamples of the data for the structure bootstrap: which measured points a resample
holds, and how often, as counts ``(condition, time)``.

A measured point is one time of one condition (all its replicates and observables together:
they share the trajectory's error at that time). Two schemes:

- ``conditions``: whole conditions drawn with replacement. The conditions (patients,
  experiments) are the independent units when there are enough of them to draw from.
- ``times``: within every condition, its measured times drawn by the moving-block bootstrap
  (Künsch 1989): blocks of ``block`` consecutive measured times with a uniform start, laid
  end to end until the condition's count is reached. Blocks keep the serial correlation that
  a misfit leaves in consecutive residuals (and that integration puts into the
  integral-matching rows); ``block=1`` is case resampling. Every condition keeps its own
  count, so its intercept (initial state) stays estimable.

``auto`` takes ``conditions`` from ``min_conditions`` conditions up, else ``times``, with
blocks of ``ceil(m ** (1/3))`` points for ``m`` measured times (the order of block length
that is optimal for the bootstrap variance, Hall, Horowitz & Jing 1995).
"""

from __future__ import annotations

import math

import numpy as np

from ude.errors import UdeError

UNITS = ("auto", "conditions", "times")


def resolve_unit(unit: str, n_conditions: int, min_conditions: int) -> str:
    """``conditions`` or ``times`` for ``unit`` (``auto``: conditions from ``min_conditions``
    conditions up)."""
    if unit not in UNITS:
        raise UdeError(
            f"unknown resampling unit '{unit}'",
            source="distill.uq.bootstrap.unit",
            fix=" or ".join(UNITS),
        )
    if unit != "auto":
        return unit
    return "conditions" if n_conditions >= min_conditions else "times"


def block_length(block: int | None, n_times: int) -> int:
    """The block length: ``block``, or ``ceil(n_times ** (1/3))`` when None; at most
    ``n_times``."""
    if block is None:
        block = math.ceil(max(n_times, 1) ** (1 / 3))
    if block < 1:
        raise UdeError(
            f"block={block}", source="distill.uq.bootstrap.block", fix="1 or more, or null"
        )
    return max(1, min(block, n_times))


def draw_counts(
    present: np.ndarray, unit: str, block: int | None, rng: np.random.Generator
) -> np.ndarray:
    """Counts ``(condition, time)`` of one resample: how often each measured point
    (``present (condition, time)``: the point has a measurement) is drawn; ``unit``:
    ``conditions`` or ``times`` (see the module)."""
    counts = np.zeros(present.shape, dtype=int)
    measured = [np.flatnonzero(row) for row in present]
    if unit == "conditions":
        usable = [c for c, t in enumerate(measured) if len(t)]
        for c in rng.choice(usable, size=len(usable), replace=True):
            counts[c, measured[c]] += 1
        return counts
    for c, times in enumerate(measured):
        m = len(times)
        if not m:
            continue
        b = block_length(block, m)
        starts = rng.integers(0, m - b + 1, size=math.ceil(m / b))
        picks = (starts[:, None] + np.arange(b)[None, :]).reshape(-1)[:m]
        np.add.at(counts[c], times[picks], 1)
    return counts


def entry_points(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Condition and time index ``(entry,)`` of every measured entry of ``values
    (condition, time, replicate, observable)``, in the order ``values[np.isfinite(values)]``
    lists them."""
    cond, time, _, _ = np.nonzero(np.isfinite(values))
    return cond, time


def present_points(values: np.ndarray) -> np.ndarray:
    """``(condition, time)``: the points with at least one measurement."""
    return np.isfinite(values).any(axis=(2, 3))
