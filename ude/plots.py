"""Figures shared by runs and the benchmark (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ude.data.measurements import Measurements  # noqa: E402
from ude.fit import missing_terms, predict  # noqa: E402
from ude.model.hybrid import HybridODE  # noqa: E402
from ude.spec.simulate import simulate_spec  # noqa: E402


def plot_data(ax, measurements: Measurements, condition: int, observable: int) -> None:
    """The measured points of one condition and observable, every replicate, on ``ax``."""
    m = measurements
    for r in range(m.values.shape[2]):
        label = "data" if r == 0 else None
        ax.plot(
            m.times, m.values[condition, :, r, observable], "o", ms=3.5, color="0.35", label=label
        )


def plot_fit(model: HybridODE, measurements: Measurements, path: Path) -> Path:
    """Data, fitted model and (when known) truth: one row per condition, one column per
    observable."""
    m = measurements
    times = np.linspace(m.times[0], m.times[-1], 300)
    _, obs = predict(model, times)
    true_obs = None
    if m.truth is not None:
        states = simulate_spec(m.truth.spec, m.truth.initial, times, m.inputs)
        cols = [
            m.truth.spec.states.index(o) if o in m.truth.spec.states else None
            for o in m.observables
        ]
        true_obs = [None if c is None else states[..., c] for c in cols]
    n_c, n_o = m.n_conditions, len(m.observables)
    rows = min(n_c, 8)
    fig, axes = plt.subplots(rows, n_o, figsize=(3.6 * n_o, 2.6 * rows), squeeze=False)
    for c in range(rows):
        for o, name in enumerate(m.observables):
            ax = axes[c, o]
            plot_data(ax, m, c, o)
            if true_obs is not None and true_obs[o] is not None:
                ax.plot(times, true_obs[o][c], "--", color="tab:green", lw=1.5, label="truth")
            ax.plot(times, obs[c, :, o], color="tab:blue", lw=2, label="UDE fit")
            ax.set_title(f"{name} — {m.conditions[c]}", fontsize=9)
            ax.set_xlabel("time")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_missing_terms(model: HybridODE, measurements: Measurements, path: Path) -> Path | None:
    """The networks' output vs the true missing term along the true trajectories."""
    m = measurements
    if m.truth is None or not m.truth.missing or not len(model.networks):
        return None
    times = np.linspace(m.times[0], m.times[-1], 300)
    states = simulate_spec(m.truth.spec, m.truth.initial, times, m.inputs)
    learned, true = missing_terms(model, m, states)
    names = list(m.truth.missing)
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
    n_t = len(times)
    for j, name in enumerate(names):
        ax = axes[0, j]
        for c in range(min(m.n_conditions, 4)):
            sl = slice(c * n_t, (c + 1) * n_t)
            ax.plot(times, true[sl, j], "--", color="tab:green", label="true" if c == 0 else None)
            ax.plot(times, learned[sl, j], color="tab:orange", label="network" if c == 0 else None)
        ax.set_title(f"missing term of d{name}/dt: {m.truth.missing[name]}", fontsize=9)
        ax.set_xlabel("time")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
