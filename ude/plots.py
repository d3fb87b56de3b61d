"""Figures shared by runs and the benchmark (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from ude.data.measurements import Measurements  # noqa: E402
from ude.data.splits import Split  # noqa: E402
from ude.fit import missing_terms, predict_fine  # noqa: E402
from ude.model.hybrid import HybridODE  # noqa: E402
from ude.spec.simulate import simulate_spec  # noqa: E402


def plot_data(
    ax, measurements: Measurements, condition: int, observable: int, held_out=None
) -> None:
    """The measured points of one condition and observable, every replicate, on ``ax``;
    with ``held_out`` (a mask shaped like ``values``), the held-out points hollow."""
    m = measurements
    for r in range(m.values.shape[2]):
        y = m.values[condition, :, r, observable]
        held = (
            np.zeros_like(y, dtype=bool)
            if held_out is None
            else held_out[condition, :, r, observable]
        )
        first = r == 0
        ax.plot(
            m.times[~held], y[~held], "o", ms=3.5, color="0.35", label="data" if first else None
        )
        if held.any():
            ax.plot(
                m.times[held], y[held], "o", ms=4.5, mfc="white", mec="tab:red", mew=1.2,
                label="held out (not fitted)" if first else None,
            )  # fmt: skip


def training_window(
    measurements: Measurements, condition: int, split: Split | None = None
) -> tuple[float, float] | None:
    """The span of the times fitted in ``condition``: all the data's without a split; None
    for a condition held out entirely."""
    m = measurements
    if split is None:
        return float(m.times[0]), float(m.times[-1])
    fitted = m.times[split.train[condition].any(axis=(1, 2))]
    return (float(fitted.min()), float(fitted.max())) if fitted.size else None


def shade_training_window(ax, window: tuple[float, float] | None) -> None:
    if window is not None:
        ax.axvspan(*window, color="0.9", zorder=0, label="training window")


def time_axis(ax, label: str = "time") -> None:
    """Ticks at round steps (1, 2, 5 x 10^k) labelled without trailing '.0': years read
    1900, 1905, ... instead of running together as 1900.0, 1902.5, ..."""
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_xlabel(label)


def legend_above(fig, axes, max_columns: int | None = None, title: str | None = None) -> None:
    """One legend for all panels, above them, where it covers no data (the figure is made
    with ``layout="constrained"``), in rows of at most ``max_columns`` entries (None: one
    row), under the figure's ``title`` (a suptitle would overlap such a legend)."""
    entries: dict[str, Any] = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(
            list(entries.values()), list(entries), loc="outside upper center",
            ncols=min(len(entries), max_columns or len(entries)), fontsize=8, frameon=False,
            title=title, title_fontsize=10,
        )  # fmt: skip
    elif title:
        fig.suptitle(title, fontsize=10)


def plot_fit(
    model: HybridODE, measurements: Measurements, path: Path, split: Split | None = None
) -> Path:
    """Data, fitted model and (when known) truth: one row per condition, one column per
    observable. With a ``split`` that holds data out, the held-out points are hollow and the
    training window is shaded."""
    m = measurements
    times, (_, obs) = predict_fine(model, m.times, 300)
    true_obs = None
    if m.truth is not None:
        states = simulate_spec(m.truth.spec, m.truth.initial, times, m.inputs)
        cols = [
            m.truth.spec.states.index(o) if o in m.truth.spec.states else None
            for o in m.observables
        ]
        true_obs = [None if c is None else states[..., c] for c in cols]
    held = split is not None and split.has_held_out
    n_c, n_o = m.n_conditions, len(m.observables)
    rows = min(n_c, 8)
    fig, axes = plt.subplots(
        rows, n_o, figsize=(3.6 * n_o, 2.6 * rows + 0.4), squeeze=False, layout="constrained"
    )
    for c in range(rows):
        for o, name in enumerate(m.observables):
            ax = axes[c, o]
            if held:
                shade_training_window(ax, training_window(m, c, split))
            plot_data(ax, m, c, o, split.held_out if held else None)
            if true_obs is not None and true_obs[o] is not None:
                ax.plot(times, true_obs[o][c], "--", color="tab:green", lw=1.5, label="truth")
            ax.plot(times, obs[c, :, o], color="tab:blue", lw=2, label="UDE fit")
            ax.set_title(f"{name} — {m.conditions[c]}", fontsize=9)
            time_axis(ax)
    legend_above(fig, axes)
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
        time_axis(ax)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def clip_to_lines(ax, lines: list[np.ndarray]) -> None:
    """Keep the y-axis within the lines' range plus three times their size on each side: a
    band along a nearly unidentified direction would otherwise flatten the curves."""
    finite = np.concatenate([x[np.isfinite(x)] for x in lines])
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        pad = 3 * (max(hi - lo, abs(hi), abs(lo)) or 1.0)
        bottom, top = ax.get_ylim()
        ax.set_ylim(max(bottom, lo - pad), min(top, hi + pad))


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
