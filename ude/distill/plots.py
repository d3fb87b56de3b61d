"""Figures of a distillation: network vs distilled terms, the twin's forecast."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ude.data.measurements import Measurements
from ude.plots import _save, plt
from ude.spec.model_spec import ModelSpec

if TYPE_CHECKING:
    from ude.distill.distiller import Distillation


def plot_distilled_terms(result: Distillation, path: Path) -> Path:
    """Network output and distilled term along the fitted trajectories, one panel per
    target state, against the sample index in time order (conditions one after another)."""
    from ude.distill.report import distilled_terms

    s = result.samples
    twin = result.twin
    on = s.on_trajectory
    ctx = np.array([p.value for p in twin.parameters.values()])
    found = distilled_terms(twin, s.X[on], s.names, ctx)
    targets = list(result.problems)
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.2), squeeze=False)
    for j, t in enumerate(targets):
        ax = axes[0, j]
        i = s.states.index(t)
        ax.plot(s.Y[on, i], color="tab:orange", lw=2, label="network")
        ax.plot(found[:, i], "--", color="tab:blue", lw=1.5, label="distilled")
        expr = str(twin.discovered.get(t, 0))
        ax.set_title(f"d{t}/dt: {expr[:60]}", fontsize=8)
        ax.set_xlabel("sample along the fitted trajectories")
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
) -> Path:
    """The twin's forecast past the training window, with the data and (when known) the
    truth; one row per condition (at most 4), one column per state."""
    m = measurements
    rows = min(m.n_conditions, 4)
    n_s = len(twin.states)
    fig, axes = plt.subplots(rows, n_s, figsize=(5 * n_s, 2.6 * rows), squeeze=False)
    for c in range(rows):
        for i, name in enumerate(twin.states):
            ax = axes[c, i]
            if truth is not None:
                ax.plot(times, truth[c, :, i], "--", color="tab:green", lw=1.5, label="truth")
            ax.plot(times, states[c, :, i], color="tab:blue", lw=1.5, label="twin")
            if name in m.observables:
                o = m.observables.index(name)
                for r in range(m.values.shape[2]):
                    ax.plot(
                        m.times,
                        m.values[c, :, r, o],
                        "o",
                        ms=3,
                        color="0.3",
                        label="data" if r == 0 else None,
                    )
            ax.axvspan(m.times[0], m.times[-1], color="0.9", zorder=0)
            ax.set_title(f"{name} — {m.conditions[c]} (shaded: training window)", fontsize=9)
            ax.set_xlabel("time")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
