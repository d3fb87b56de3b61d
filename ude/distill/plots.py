"""Figures of a distillation: network vs distilled terms, the twin's forecast."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import sympy as sp

from ude.data.measurements import Measurements
from ude.plots import _save, plot_data, plt
from ude.spec.model_spec import ModelSpec

if TYPE_CHECKING:
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
        ax.set_xlabel("time (along the fitted trajectories)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_forecast(
    times: np.ndarray,
    states: np.ndarray,
    truth: np.ndarray | None,
    measurements: Measurements,
    twin: ModelSpec,
    path: Path,
    band: ForecastInterval | None = None,
) -> Path:
    """The twin's forecast past the training window, with the data, (when known) the truth
    and (when given) the band; one row per condition (at most 4), one column per state."""
    m = measurements
    rows = min(m.n_conditions, 4)
    n_s = len(twin.states)
    fig, axes = plt.subplots(rows, n_s, figsize=(5 * n_s, 2.6 * rows), squeeze=False)
    for c in range(rows):
        for i, name in enumerate(twin.states):
            ax = axes[c, i]
            if truth is not None:
                ax.plot(times, truth[c, :, i], "--", color="tab:green", lw=1.5, label="truth")
            if band is not None:
                ax.fill_between(
                    band.times,
                    band.lower[c, :, i],
                    band.upper[c, :, i],
                    color="tab:blue",
                    alpha=0.2,
                    lw=0,
                    label=f"{band.level:.0%} band",
                )
            ax.plot(times, states[c, :, i], color="tab:blue", lw=1.5, label="twin")
            if name in m.observables:
                o = m.observables.index(name)
                plot_data(ax, m, c, o)
            ax.axvspan(m.times[0], m.times[-1], color="0.9", zorder=0)
            if band is not None:
                _clip_to_lines(ax, [states[c, :, i]] + ([] if truth is None else [truth[c, :, i]]))
            ax.set_title(f"{name} — {m.conditions[c]} (shaded: training window)", fontsize=9)
            ax.set_xlabel("time")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _clip_to_lines(ax, lines: list[np.ndarray]) -> None:
    """Keep the y-axis within the lines' range plus three times their size on each side: a
    band along a nearly unidentified direction would otherwise flatten the curves."""
    finite = np.concatenate([x[np.isfinite(x)] for x in lines])
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        pad = 3 * (max(hi - lo, abs(hi), abs(lo)) or 1.0)
        bottom, top = ax.get_ylim()
        ax.set_ylim(max(bottom, lo - pad), min(top, hi + pad))
