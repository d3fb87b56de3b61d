"""Figures of a distillation: network vs distilled terms, the twin's forecast."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import sympy as sp

from ude.data.measurements import Measurements
from ude.plots import (
    _save,
    clip_to_lines,
    legend_above,
    plot_data,
    plt,
    shade_training_window,
    time_axis,
    training_window,
)
from ude.spec.model_spec import ModelSpec

if TYPE_CHECKING:
    from ude.data.splits import Split
    from ude.distill.distiller import Distillation
    from ude.distill.uncertainty import ForecastInterval


def plot_distilled_terms(result: Distillation, path: Path) -> Path:
    """Network output and distilled term along the fitted trajectories against time, one
    panel per state a network changes, one line pair per condition (at most 4)."""
    from ude.distill.report import distilled_terms

    s = result.samples
    twin = result.twin
    on = s.on_trajectory
    ctx = np.array([p.value for p in twin.parameters.values()])
    found = distilled_terms(twin, s.X[on], s.names, ctx)
    routes = result.routes
    targets = list(dict.fromkeys(state for t in result.problems for state in routes[t]))
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.2), squeeze=False)
    for j, t in enumerate(targets):
        ax = axes[0, j]
        i = s.states.index(t)
        when, cond = s.times[on], s.condition[on]
        for c in np.unique(cond)[:4]:
            k = cond == c
            first = c == cond[0]
            ax.plot(
                when[k], s.Y[on][k, i], color="tab:orange", lw=2, label="network" if first else None
            )
            ax.plot(
                when[k],
                found[k, i],
                "--",
                color="tab:blue",
                lw=1.5,
                label="distilled" if first else None,
            )
        expr = sp.expand(
            twin.discovered.get(t, sp.Integer(0)).xreplace(
                {sp.Symbol(k): sp.Float(p.value, 4) for k, p in twin.parameters.items()}
            )
        )
        ax.set_title(f"d{t}/dt: {str(expr)[:70]}", fontsize=8)
        time_axis(ax, "time (along the fitted trajectories)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def settled_time(times: np.ndarray, curves: list[np.ndarray], tol: float = 0.01) -> float:
    """The time after which every curve ``(time,)`` stays within ``tol`` of its range of its
    final value; the last time when one never settles (an oscillation) or is not finite."""
    settled = float(times[0])
    for x in curves:
        if not np.all(np.isfinite(x)):
            return float(times[-1])
        off = np.flatnonzero(np.abs(x - x[-1]) > tol * (x.max() - x.min()))
        if off.size:
            settled = max(settled, float(times[min(off[-1] + 1, len(times) - 1)]))
    return settled


def forecast_end(times: np.ndarray, curves: list[np.ndarray], window: tuple[float, float]) -> float:
    """Where the forecast plot ends: one training window past the later of the window's end
    and the time the curves settle, and no further than ``times`` go (the forecast horizon,
    10 windows by default). A forecast that is flat after a while is not drawn for 10."""
    span = window[1] - window[0]
    return min(float(times[-1]), max(window[1], settled_time(times, curves)) + span)


def plot_forecast(
    times: np.ndarray,
    states: np.ndarray,
    truth: np.ndarray | None,
    measurements: Measurements,
    twin: ModelSpec,
    path: Path,
    band: ForecastInterval | None = None,
    split: Split | None = None,
) -> Path:
    """The twin's forecast past the training window, with the data, (when known) the truth
    and (when given) the band; one row per condition (at most 4), one column per state.

    The training window is shaded (with a ``split``: the fitted times only, the held-out
    points hollow). The time axis ends once the twin and the truth have settled (see
    :func:`forecast_end`)."""
    m = measurements
    rows = min(m.n_conditions, 4)
    n_s = len(twin.states)
    curves = [states[c, :, i] for c in range(rows) for i in range(n_s)]
    if truth is not None:
        curves += [truth[c, :, i] for c in range(rows) for i in range(n_s)]
    shown = times <= forecast_end(times, curves, (float(m.times[0]), float(m.times[-1])))
    t = times[shown]
    held = split.held_out if split is not None and split.has_held_out else None
    fig, axes = plt.subplots(
        rows, n_s, figsize=(5 * n_s, 2.6 * rows + 0.4), squeeze=False, layout="constrained"
    )
    for c in range(rows):
        window = training_window(m, c, split)
        for i, name in enumerate(twin.states):
            ax = axes[c, i]
            if truth is not None:
                ax.plot(t, truth[c, shown, i], "--", color="tab:green", lw=1.5, label="truth")
            if band is not None:
                inside = band.times <= t[-1]
                ax.fill_between(
                    band.times[inside],
                    band.lower[c, inside, i],
                    band.upper[c, inside, i],
                    color="tab:blue",
                    alpha=0.2,
                    lw=0,
                    label=f"{band.level:.0%} band",
                )
            ax.plot(t, states[c, shown, i], color="tab:blue", lw=1.5, label="twin")
            if name in m.observables:
                plot_data(ax, m, c, m.observables.index(name), held)
            shade_training_window(ax, window)
            if band is not None:
                lines = [states[c, shown, i]] + ([] if truth is None else [truth[c, shown, i]])
                clip_to_lines(ax, lines)
            note = "held out" if window is None else "shaded: training window"
            ax.set_title(f"{name} — {m.conditions[c]} ({note})", fontsize=9)
            time_axis(ax)
    legend_above(fig, axes)
    return _save(fig, path)
