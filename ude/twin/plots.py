"""Figures of a twin's simulation: its observables (or states) with their band, the doses, and
the measurements it was fitted on (filled) or is compared with (hollow)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ude.plots import _save, clip_to_lines, legend_above, plt, time_axis

if TYPE_CHECKING:
    import pandas as pd

    from ude.data.measurements import Measurements


def plot_simulation(
    table: pd.DataFrame,
    path: str | Path,
    columns: Sequence[str],
    title: str = "",
    fitted: Measurements | None = None,
    compared: Measurements | None = None,
    condition: str | None = None,
    extra: dict[str, pd.DataFrame] | None = None,
) -> Path:
    """One panel per name of ``columns`` (observables or states of ``table``, a
    :meth:`ude.twin.Twin.simulate` table): the prediction, its band when the table has one,
    dose times as ticks on the time axis, the measurements of ``condition`` in ``fitted``
    (filled) and ``compared`` (hollow), and ``extra`` predictions (label: table) dashed."""
    n = len(columns)
    fig, axes = plt.subplots(1, n, figsize=(3.8 * n, 3.0), squeeze=False, layout="constrained")
    doses = table.attrs.get("doses", [])
    level = table.attrs.get("level")
    for ax, name in zip(axes[0], columns, strict=True):
        t = table["time"].to_numpy()
        if f"{name}_lower" in table and np.isfinite(table[f"{name}_lower"]).any():
            # an unbounded band (too many draws blew up) shades the panel's whole height
            far = 100 * max(float(np.nanmax(np.abs(table[name]), initial=0.0)), 1.0)
            lower = np.clip(table[f"{name}_lower"], -far, far)
            upper = np.clip(table[f"{name}_upper"], -far, far)
            ax.fill_between(
                t, lower, upper, color="tab:blue", alpha=0.2,
                lw=0, label=f"{level:.0%} band" if level else "band",
            )  # fmt: skip
        for k, (label, other) in enumerate((extra or {}).items()):
            style = ["--", ":", "-."][k % 3]
            ax.plot(other["time"], other[name], style, color="0.4", lw=1.4, label=label)
        ax.plot(t, table[name], color="tab:blue", lw=2, label="twin")
        for m, kind in ((fitted, "fitted"), (compared, "compared")):
            _points(ax, m, condition, name, kind)
        for k, d in enumerate(doses):
            ax.axvline(
                d["time"], ymax=0.06, color="tab:red", lw=2, label="dose" if k == 0 else None
            )
        if f"{name}_lower" in table:
            clip_to_lines(ax, [table[name].to_numpy()])
        ax.set_title(name, fontsize=10)
        time_axis(ax)
    legend_above(fig, axes, max_columns=2 * n, title=title)
    return _save(fig, Path(path))


def _points(ax, m: Measurements | None, condition: str | None, name: str, kind: str) -> None:
    if m is None or name not in m.observables:
        return
    c = m.conditions.index(condition) if condition in m.conditions else 0
    values = m.values[c, :, :, m.observables.index(name)]
    for r in range(values.shape[1]):
        ok = np.isfinite(values[:, r])
        if kind == "fitted":
            ax.plot(
                m.times[ok], values[ok, r], "o", ms=4, color="0.2",
                label="measurements (fitted)" if r == 0 else None,
            )  # fmt: skip
        else:
            ax.plot(
                m.times[ok], values[ok, r], "o", ms=4.5, mfc="white", mec="tab:red", mew=1.1,
                label="measurements (not fitted)" if r == 0 else None,
            )  # fmt: skip
