"""The benchmark report: ``results.csv`` (one table), ``report.md`` (methods x challenges, ude
against each baseline per axis, per-system detail) and PNG curves and heatmaps."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CHALLENGES: dict[str, str] = {
    "noisy data": "noise",
    "sparse data, unobserved derivatives": "n_times",
    "replicates": "replicates",
    "several conditions": "conditions",
    "latent variables": "unobserved",
    "prior knowledge": "corruption",
    "library design": "library",
    "high dimension": "dimension",
}
"""Each challenge and the axis whose cells measure it (``dimension``: the base cells grouped by
the system's number of states)."""

CURVES = ("noise", "n_times", "unobserved")
COLUMNS = [
    "id", "system", "dimension", "axis", "value", "method", "seed", "noise", "n_times",
    "replicates", "conditions", "unobserved", "corruption", "library", "f1", "exact",
    "f1_unknown", "coef_error", "n_terms", "forecast_nmse", "forecast_nmse_hybrid", "coverage",
    "band_width", "band_bounded", "coef_coverage", "brier", "inclusion_true", "inclusion_false",
    "seconds", "cpu_seconds", "oracle", "oracle_delta", "error", "commit", "brier_horseshoe",
    "inclusion_true_horseshoe", "inclusion_false_horseshoe", "coef_coverage_chosen", "machine",
    "by_parsimony",
]  # fmt: skip
LEVEL = 0.05
"""|difference in mean F1| below this counts as level."""


def axis_rows(rows: list[dict[str, Any]], axis: str) -> list[tuple[Any, dict[str, Any]]]:
    """``(axis value, row)`` for the cells that measure ``axis``: its own cells plus the base
    cells (at the base value)."""
    if axis == "dimension":
        return [(r["dimension"], r) for r in rows if r["axis"] == "base"]
    return [(r[axis], r) for r in rows if r["axis"] in (axis, "base")]


def _f1(rs: Sequence[dict]) -> float:
    v = [r["f1"] for r in rs if r.get("f1") is not None]
    return float(np.mean(v)) if v else math.nan


def _f1u(rs: Sequence[dict]) -> float:
    v = [r["f1_unknown"] for r in rs if r.get("f1_unknown") is not None]
    return float(np.mean(v)) if v else math.nan


def _exact(rs: Sequence[dict]) -> float:
    v = [bool(r["exact"]) for r in rs if r.get("exact") is not None]
    return float(np.mean(v)) if v else math.nan


def _nmse(rs: Sequence[dict]) -> float:
    v = [float(r.get("forecast_nmse", math.inf)) for r in rs if "error" not in r]
    return float(np.median(v)) if v else math.nan


def _coverage(rs: Sequence[dict]) -> float:
    v = [r["coverage"] for r in rs if r.get("coverage") is not None]
    return float(np.mean(v)) if v else math.nan


def _fmt(x: float, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}f}" if abs(x) >= 10**-digits or x == 0 else f"{x:.1e}"


def _axes(rows: list[dict]) -> list[str]:
    """``dimension`` and the axes the rows have cells on, in the challenges' order (then any
    other in the order met), whatever order the rows come in."""
    present = dict.fromkeys(r["axis"] for r in rows if r["axis"] != "base")
    known = [a for a in CHALLENGES.values() if a in present]
    return ["dimension", *known, *(a for a in present if a not in known)]


def _methods(rows: list[dict]) -> list[str]:
    order = ["ude", "sindy", "weak_sindy", "esindy", "bayes", "node"]
    found = {r["method"] for r in rows}
    return [m for m in order if m in found] + sorted(found - set(order))


def _scenario(row: dict) -> str:
    system, _, key = row["id"].split("/")
    return f"{system}/{key}"


def matched(rows: list[dict], methods: Sequence[str] | None = None) -> list[dict]:
    """The rows of the scenarios that every one of ``methods`` (default: all) has a result
    for, so that averages compare like with like."""
    methods = list(methods or _methods(rows))
    have: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        have[_scenario(r)].add(r["method"])
    keep = {s for s, m in have.items() if set(methods) <= m}
    return [r for r in rows if _scenario(r) in keep and r["method"] in methods]


def challenge_table(rows: list[dict]) -> str:
    """Methods x challenges: mean F1 / median forecast NMSE over each challenge's cells."""
    methods = _methods(rows)
    present = {
        name: axis
        for name, axis in CHALLENGES.items()
        if axis == "dimension" or any(r["axis"] == axis for r in rows)
    }
    head = (
        "| method | "
        + " | ".join(present)
        + " | uncertainty (95 % coverage) | wall time (median s) | CPU time (median s) |"
    )
    lines = [head, "|" + "---|" * (len(present) + 4)]
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        cells = []
        for axis in present.values():
            rs = [r for _, r in axis_rows(mine, axis)]
            cells.append(f"{_fmt(_f1(rs))} · {_fmt(_f1u(rs))} / {_fmt(_nmse(rs))}")
        cells += [_fmt(_coverage(mine)), _fmt(_median(mine, "seconds"), 1)]
        cells.append(_fmt(_median(mine, "cpu_seconds"), 1))  # nan for rows from before it
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _median(rows: Sequence[dict], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.median(values)) if values else math.nan


def comparison_table(rows: list[dict], reference: str = "ude") -> str:
    """Per axis and baseline: mean F1 (all terms, and the terms the prior does not give) and
    median forecast NMSE of ``reference`` against the baseline over the same cells, with
    ahead / level / behind by F1 on the unknown terms and by forecast."""
    lines = [
        f"| axis | baseline | cells | F1 {reference} | F1 baseline | F1 unknown terms {reference} "
        f"| F1 unknown terms baseline | NMSE {reference} | NMSE baseline | by discovery "
        "| by forecast |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    axes = _axes(rows)
    for axis in axes:
        pairs = axis_rows(rows, axis)
        ref = [r for _, r in pairs if r["method"] == reference]
        if not ref:
            continue
        for base in _methods(rows):
            if base == reference:
                continue
            both = matched([r for _, r in pairs], [reference, base])
            ref = [r for r in both if r["method"] == reference]
            other = [r for r in both if r["method"] == base]
            if not other:
                continue
            u_ref, u_other = _f1u(ref), _f1u(other)
            n_ref, n_other = _nmse(ref), _nmse(other)
            if math.isnan(u_other) or math.isnan(u_ref):  # forecast-only
                by_f1 = "—"
            else:
                d = u_ref - u_other
                by_f1 = "level" if abs(d) < LEVEL else ("ahead" if d > 0 else "behind")
            lines.append(
                f"| {axis} | {base} | {len(ref)} | {_fmt(_f1(ref))} | {_fmt(_f1(other))} | "
                f"{_fmt(u_ref)} | {_fmt(u_other)} | {_fmt(n_ref)} | {_fmt(n_other)} | {by_f1} | "
                f"{_verdict_nmse(n_ref, n_other)} |"
            )
    return "\n".join(lines)


def comparison_note(rows: list[dict], reference: str = "ude") -> str | None:
    """Why the comparison with ``reference`` has no lines, when it has none; else None."""
    methods = _methods(rows)
    if reference not in methods:
        return (
            f"No comparison: this suite has no `{reference}` cells (its methods: "
            f"{', '.join(methods) or 'none'}). Add `{reference}` to `suite.methods` to compare "
            "it with each baseline."
        )
    if len(methods) == 1:
        return f"No comparison: `{reference}` is the only method of this suite."
    if comparison_table(rows, reference).count("\n") < 2:
        return (
            f"No comparison: `{reference}` and the baselines have no scenario with results "
            "for both yet."
        )
    return None


def _verdict_nmse(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b):
        return "—"
    if math.isinf(a) and math.isinf(b):
        return "level"
    ratio = (a + 1e-12) / (b + 1e-12)
    return "level" if 0.5 <= ratio <= 2 else ("ahead" if ratio < 0.5 else "behind")


def axis_table(rows: list[dict], axis: str) -> str:
    """Mean F1, exact-recovery rate and median NMSE per method and value of ``axis``."""
    pairs = axis_rows(rows, axis)
    values = sorted({v for v, _ in pairs}, key=lambda v: (str(type(v)), v))
    lines = [
        "| method | " + " | ".join(f"{axis}={v}" for v in values) + " |",
        "|---|" + "---|" * len(values),
    ]
    for m in _methods(rows):
        cells = []
        for v in values:
            rs = [r for vv, r in pairs if vv == v and r["method"] == m]
            cells.append(f"{_fmt(_f1(rs))} · {_fmt(_exact(rs))} · {_fmt(_nmse(rs))}" if rs else "—")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TARGETS = {"f1_unknown": 0.6, "exact": 1 / 3, "coverage": 0.85}
"""The per-system targets for ``ude``: issue 13's mean F1 on the unknown terms and fraction of
exact cells (besides, no axis with a worse median forecast than the neural ODE and none where
a sparse baseline is level or ahead on discovery), and issue 15's mean coverage of the 95 %
band over the cells that have one."""
SPARSE = ("sindy", "weak_sindy", "esindy")


def targets_table(rows: list[dict], reference: str = "ude") -> str:
    """Per system: ``reference``'s standing on :data:`TARGETS`, the axes where its median
    forecast NMSE is above the neural ODE's, and those where a sparse baseline's mean F1 on
    the unknown terms is not at least :data:`LEVEL` below its own (both on matched cells)."""
    lines = [
        f"| system | cells | F1 unknown terms (≥ {TARGETS['f1_unknown']}) | exact "
        f"(≥ {TARGETS['exact']:.0%} of cells) | cells not exact, by the oracle | axes with a "
        "worse forecast than node | axes not ahead of every sparse baseline | 95 % band "
        f"coverage (≥ {TARGETS['coverage']}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for system in sorted({r["system"] for r in rows if r["method"] == reference}):
        mine = [r for r in rows if r["system"] == system]
        ref = [r for r in mine if r["method"] == reference]
        exact = [bool(r.get("exact")) for r in ref if r.get("exact") is not None]
        f1u = _f1u(ref)
        worse, behind = [], []
        axes = _axes(mine)
        for axis in axes[1:] or ["base"]:
            pairs = [r for _, r in axis_rows(mine, axis)] if axis != "base" else mine
            both = matched(pairs, [reference, "node"])
            a = _nmse([r for r in both if r["method"] == reference])
            b = _nmse([r for r in both if r["method"] == "node"])
            if both and not (a <= b or (math.isinf(a) and math.isinf(b))):
                worse.append(f"{axis} ({_fmt(a)} vs {_fmt(b)})")
            for base in SPARSE:
                both = matched(pairs, [reference, base])
                if not both:
                    continue
                u = _f1u([r for r in both if r["method"] == reference])
                o = _f1u([r for r in both if r["method"] == base])
                if not u - o >= LEVEL:
                    behind.append(f"{axis}: {base} ({_fmt(u)} vs {_fmt(o)})")
        exact_text = f"{sum(exact)}/{len(exact)}" if exact else "—"
        if exact:
            exact_text += " met" if sum(exact) >= TARGETS["exact"] * len(exact) else " short"
        f1_text = _fmt(f1u)
        if not math.isnan(f1u):
            f1_text += " met" if f1u >= TARGETS["f1_unknown"] else " short"
        lines.append(
            f"| {system} | {len(ref)} | {f1_text} | {exact_text} | {_oracle_counts(ref)} | "
            f"{'; '.join(worse) or 'none'} | {'; '.join(behind) or 'none'} | "
            f"{_coverage_text(ref)} |"
        )
    return "\n".join(lines)


def _coverage_text(rows: list[dict]) -> str:
    """The mean band coverage of ``rows`` against :data:`TARGETS`, with how many of them have
    a band when some do not (no band: none was returned, or it was bounded over too little of
    the forecast to score, :data:`ude.benchmark.metrics.BAND_MIN_BOUNDED`)."""
    mean = _coverage(rows)
    if math.isnan(mean):
        return "—"
    text = f"{_fmt(mean)} {'met' if mean >= TARGETS['coverage'] else 'short'}"
    with_band = sum(1 for r in rows if r.get("coverage") is not None)
    return text + (
        f" ({with_band} of {len(rows)} cells have a band)" if with_band < len(rows) else ""
    )


ORACLE = {
    "data prefer the twin": "data",
    "search missed the truth": "search",
    "truth not in the library": "library",
    "truth's refit failed to solve": "failed",
    "truth's refit not admissible": "inadmissible",
    "chosen is the truth's support": "constants",
    "data prefer the twin's constants": "constants",
    "search missed the truth's constants": "search",
}
"""Short names of the oracle's verdicts (:mod:`ude.distill.oracle`) in the targets table."""


def _oracle_counts(rows: list[dict]) -> str:
    """Of the cells whose structure is not exact: how many the data do not identify (the
    truth, refitted, scores behind the twin: ``data``), how many the search missed
    (``search``), whose truth the library cannot express (``library``), whose terms are the
    truth's with a constant off (``constants``: a fitted Hill n more than 10 % from the
    truth's, and the truth refitted from its own values scores no better, or was not run;
    ``search`` where the selection would take that refit), whose truth's refits failed to
    solve (``failed``) or, solved, drive a species below zero (``inadmissible``), whose
    discovered terms are the truth's beside a known term whose form the benchmark corrupted
    (``prior``: such a twin cannot be exact); cells run before the oracle existed count as
    ``no oracle``. Then, of those whose run checked
    (``by_parsimony``), in how many the run itself said that some of the twin's parameters
    are identified only because a term was left out."""
    missed = [r for r in rows if r.get("exact") is False]
    if not missed:
        return "—"
    counts: dict[str, int] = {}
    for r in missed:
        key = ORACLE.get(r.get("oracle") or "", "no oracle")
        if r.get("oracle") == "chosen is the truth's support" and r.get("corruption") == "form":
            key = "prior"  # the discovered terms are the truth's; the corrupted known term is not
        counts[key] = counts.get(key, 0) + 1
    text = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    checked = [r["by_parsimony"] for r in missed if r.get("by_parsimony")]
    if checked:
        said = sum(found != "none" for found in checked)
        text += f"; said identified only by parsimony in {said} of {len(checked)} checked"
    return text


CALIBRATION = (
    ("coverage", "95 % band coverage"),
    ("band_width", "band width (of the true range)"),
    ("band_bounded", "share of the forecast the band bounds"),
    ("coef_coverage", "coefficient interval coverage"),
    ("coef_coverage_chosen", "the same, given the twin's structure"),
    ("brier", "inclusion Brier"),
    ("inclusion_true", "true terms' inclusion"),
    ("inclusion_false", "false terms' inclusion"),
)
"""The calibration columns: a band that covers 95 % of the held-out truth, intervals that hold
the true coefficients, inclusion probabilities that separate true from false terms."""


def _mean_cell(rs: list[dict], key: str) -> str:
    """The mean of ``key`` over the rows that report it, with their count in parentheses."""
    v = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
    v = [x for x in v if math.isfinite(x)]
    return f"{_fmt(float(np.mean(v)))} ({len(v)})" if v else "–"


SYSTEM_CALIBRATION = CALIBRATION[:5]
"""The columns of :func:`calibration_by_system`: the band and the coefficient intervals."""


def calibration_by_system(rows: list[dict]) -> str:
    """Per system and method, the means of the band's and the coefficient intervals' columns
    over its cells, with the seeds they span. One system's cells of one seed share that
    seed's noise (the axes change one setting at a time from the base), so a miss in one
    often repeats in the others; over several seeds (``suite=calibration``) each seed is an
    independent draw of the noise. The last column scores the intervals given the twin's
    structure on the cells where that structure is the truth's: the calibration of the
    parameter uncertainty alone, without the structure's."""
    head = "| system | method | seeds | " + " | ".join(n for _, n in SYSTEM_CALIBRATION)
    head += " | the same, on the cells whose twin is exact |"
    lines = [head, "|---" * (len(SYSTEM_CALIBRATION) + 4) + "|"]
    for system in sorted({r["system"] for r in rows}):
        for m in _methods(rows):
            mine = [
                r for r in rows if r["system"] == system and r["method"] == m and "error" not in r
            ]
            if not mine:
                continue
            seeds = len({r.get("seed") for r in mine})
            cells = " | ".join(_mean_cell(mine, k) for k, _ in SYSTEM_CALIBRATION)
            exact = _mean_cell([r for r in mine if r.get("exact") is True], "coef_coverage_chosen")
            lines.append(f"| {system} | {m} | {seeds} | {cells} | {exact} |")
    return "\n".join(lines)


def calibration_table(rows: list[dict]) -> str:
    """Per method, the mean of each calibration column over its cells that report it (the
    count in parentheses); issue 15's targets: coverage 0.90-0.98, coefficient coverage at
    least 0.9, true terms' inclusion at least 0.8 and false terms' at most 0.2. A method
    that also reports its horseshoe's inclusion probabilities (``ude`` with ``distill.uq``:
    the columns ending ``_horseshoe``) gets a second line with them."""
    head = "| method | " + " | ".join(n for _, n in CALIBRATION) + " |"
    lines = [head, "|---" * (len(CALIBRATION) + 1) + "|"]

    for m in _methods(rows):
        mine = [r for r in rows if r["method"] == m and "error" not in r]
        lines.append(f"| {m} | " + " | ".join(_mean_cell(mine, k) for k, _ in CALIBRATION) + " |")
        if any("brier_horseshoe" in r for r in mine):
            other = [
                _mean_cell(mine, f"{k}_horseshoe") if "inclusion" in n else "–"
                for k, n in CALIBRATION
            ]
            lines.append(f"| {m}: its horseshoe's inclusion | " + " | ".join(other) + " |")
    return "\n".join(lines)


def _commit(row: dict) -> str:
    """The first 10 digits of the commit a row was made with, ``unknown`` if it does not say,
    `` (uncommitted changes)`` added when the tree differed from it."""
    v = row.get("code_version") or {}
    return (v.get("commit") or "unknown")[:10] + (
        " (uncommitted changes)" if v.get("dirty") else ""
    )


def _tally(labels: Sequence[str], sep: str) -> str:
    """``label: n cells`` for each distinct label, the most frequent first."""
    count: dict[str, int] = defaultdict(int)
    for label in labels:
        count[label] += 1
    return sep.join(f"{k}: {n} cells" for k, n in sorted(count.items(), key=lambda kv: -kv[1]))


def code_versions(rows: list[dict]) -> str:
    """The code versions the rows were made with: ``commit (n rows)``, dirty ones marked."""
    return _tally([_commit(r) for r in rows], ", ")


def machines(rows: list[dict]) -> str:
    """The processors the rows were made on (:func:`ude.benchmark.suite.processor`), with how
    many each; ``unknown`` for rows from before they were recorded (a processor's name may
    hold commas, so they are separated by semicolons)."""
    return _tally([r.get("machine") or "unknown" for r in rows], "; ")


def hybrid_table(rows: list[dict]) -> str:
    """Median forecast NMSE of methods that report an intermediate (hybrid) model, before and
    after distillation, per axis: where the forecast is lost."""
    have = [r for r in rows if "forecast_nmse_hybrid" in r]
    if not have:
        return ""
    lines = [
        "| axis | method | cells | NMSE before distillation (hybrid) | NMSE of the twin |",
        "|---|---|---|---|---|",
    ]
    axes = _axes(have)
    for axis in axes:
        for m in _methods(have):
            rs = [r for _, r in axis_rows(have, axis) if r["method"] == m]
            if not rs:
                continue
            hyb = float(np.median([float(r["forecast_nmse_hybrid"]) for r in rs]))
            lines.append(f"| {axis} | {m} | {len(rs)} | {_fmt(hyb)} | {_fmt(_nmse(rs))} |")
    return "\n".join(lines)


def plot_curves(rows: list[dict], path: Path) -> Path | None:
    """Mean F1 and median forecast NMSE against noise, time points and unobserved fraction,
    on the scenarios every method has results for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = matched(rows) or rows  # like with like when methods cover different scenarios
    axes = [a for a in CURVES if any(r["axis"] == a for r in rows)]
    if not axes:
        return None
    fig, grid = plt.subplots(2, len(axes), figsize=(4.2 * len(axes), 6.5), squeeze=False)
    for j, axis in enumerate(axes):
        pairs = axis_rows(rows, axis)
        values = sorted({v for v, _ in pairs})
        for m in _methods(rows):
            f1 = [_f1([r for v, r in pairs if v == x and r["method"] == m]) for x in values]
            nm = [_nmse([r for v, r in pairs if v == x and r["method"] == m]) for x in values]
            if not all(math.isnan(f) for f in f1):
                grid[0, j].plot(values, f1, "o-", label=m)
            nm = [min(n, 1e3) for n in nm]  # inf (a failed forecast) drawn at the top
            grid[1, j].plot(values, nm, "o-", label=m)
        grid[0, j].set(title=f"recovery vs {axis}", xlabel=axis, ylabel="term F1", ylim=(0, 1.05))
        grid[1, j].set(xlabel=axis, ylabel="forecast NMSE (median)", yscale="log")
    grid[0, 0].legend(fontsize=8)
    grid[1, 0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_heatmaps(rows: list[dict], path: Path) -> Path | None:
    """:func:`heatmaps_figure` as a PNG at ``path``; None when there is nothing to draw."""
    import matplotlib.pyplot as plt

    fig = heatmaps_figure(rows)
    if fig is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmaps_figure(rows: list[dict]):
    """Methods x systems heatmaps of mean F1 and median forecast NMSE (log colour scale), on
    the scenarios every method has results for. A failed forecast (NMSE ∞) is a black cell
    marked ∞; a method with no value for a system (no equations, no cells) is a grey cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm, Normalize

    rows = matched(rows) or rows
    methods = _methods(rows)
    systems = sorted({r["system"] for r in rows})
    if not methods or not systems:
        return None
    f1 = np.full((len(methods), len(systems)), np.nan)
    nm = np.full_like(f1, np.nan)
    for i, m in enumerate(methods):
        for j, s in enumerate(systems):
            rs = [r for r in rows if r["method"] == m and r["system"] == s]
            f1[i, j] = _f1(rs)
            nm[i, j] = _nmse(rs)
    width = max(8.0, 2 + 1.6 * len(systems))
    fig, axs = plt.subplots(1, 2, figsize=(width, 2.5 + 0.45 * len(methods)))
    panels = (
        (axs[0], f1, "term F1 (mean)", "viridis", Normalize(0, 1), "{:.2f}"),
        (axs[1], nm, "forecast NMSE (median)", "magma_r", LogNorm(1e-4, 1e3), "{:.2g}"),
    )
    for ax, data, title, name, norm, fmt in panels:
        cmap = plt.get_cmap(name).with_extremes(bad="0.85")  # grey: no value
        shown = np.ma.masked_invalid(np.clip(data, norm.vmin, norm.vmax))
        im = ax.imshow(shown, cmap=cmap, norm=norm, aspect="auto")
        for (i, j), v in np.ndenumerate(data):
            if np.isinf(v):  # a failed forecast: the worst colour, marked
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="black"))
                ax.text(j, i, "∞", ha="center", va="center", fontsize=12, color="white")
            elif np.isnan(v):
                ax.text(j, i, "—", ha="center", va="center", fontsize=9, color="0.3")
            else:
                r, g, b, _ = cmap(norm(min(max(v, norm.vmin), norm.vmax)))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(
                    j, i, fmt.format(v), ha="center", va="center", fontsize=8,
                    color="white" if dark else "black",
                )  # fmt: skip
        ax.set_xticks(range(len(systems)), systems, rotation=30, ha="right")
        ax.set_yticks(range(len(methods)), methods)
        ax.set_title(title)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.text(
        0.5, 0.005, "∞: the forecast failed or blew up; —: no value (no equations, or no cells)",
        ha="center", va="bottom", fontsize=8,
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in sorted(rows, key=lambda r: (r["system"], r["axis"], str(r["value"]), r["method"])):
            w.writerow({**r, "commit": _commit(r)})


TEXT_COLUMNS = (
    "id", "system", "axis", "method", "corruption", "library", "oracle", "error", "machine",
    "by_parsimony",
)  # fmt: skip
INT_COLUMNS = ("dimension", "seed", "n_times", "replicates", "conditions", "n_terms")


def _from_text(key: str, text: str) -> Any:
    """A ``results.csv`` cell back to the value its row held."""
    if key in TEXT_COLUMNS:
        return text
    if key == "exact":
        return text == "True"
    if key == "commit":
        commit, _, dirty = text.partition(" ")
        return {"commit": None if commit == "unknown" else commit, "dirty": bool(dirty)}
    try:
        number = float(text)
    except ValueError:
        return text  # an axis value that is a word (value: constant, form)
    return int(number) if key in INT_COLUMNS or (key == "value" and number.is_integer()) else number


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``results.csv`` that :func:`write_csv` wrote, as the report reads them:
    numbers as numbers, ``exact`` a bool, ``commit`` back to ``code_version``, empty cells
    left out (so a row without an error has no ``error`` key)."""
    rows = []
    with Path(path).open(newline="") as fh:
        for line in csv.DictReader(fh):
            row = {k: _from_text(k, v) for k, v in line.items() if k and v != ""}
            row.setdefault("value", None)  # a base cell's
            if "commit" in row:
                row["code_version"] = row.pop("commit")
            rows.append(row)
    return rows


def write_report(
    rows: list[dict], out_dir: str | Path, title: str = "Benchmark", header: str = ""
) -> Path:
    """Write ``results.csv``, ``report.md`` and ``plots/*.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "results.csv")
    curves = plot_curves(rows, out / "plots" / "curves.png")
    heat = plot_heatmaps(rows, out / "plots" / "heatmaps.png")
    errors = [r for r in rows if "error" in r]
    per_system = defaultdict(list)
    for r in rows:
        per_system[r["system"]].append(r)
    parts = [f"# {title}", ""]
    if header:
        parts += [header, ""]
    parts += [
        f"{len(rows)} cells: {len(per_system)} systems ({', '.join(sorted(per_system))}), "
        f"methods {', '.join(_methods(rows))}; {len(errors)} cells failed with an error.",
        "",
        f"Code versions: {code_versions(rows)}.",
        "",
        f"Processors: {machines(rows)}.",
        "",
        *(
            [
                "## Targets of `ude`, per system",
                "",
                "Mean F1 on the terms the prior does not give, the fraction of exact cells, the "
                "axes where `ude`'s median forecast NMSE is above the neural ODE's, and the axes "
                f"where a sparse baseline's F1 on the unknown terms is not {LEVEL} or more below "
                "`ude`'s (each on the cells both methods have).",
                "",
                targets_table(rows),
                "",
            ]
            if any(r["method"] == "ude" for r in rows)
            else []
        ),
        "## Calibration of the uncertainty",
        "",
        "Per method, means over its cells (how many in parentheses): the share of the true "
        "forecast inside the nominal 95 % band and the band's mean width (each state's in units "
        "of its true range); the share of the true active coefficients inside their 95 % "
        "interval (a missed term counts as outside; `ude` is judged on the terms its prior does "
        "not give; its intervals are averaged over the refitted structures, a term's reaching "
        "zero where they disagree on it, and beside them those of the twin's own structure); "
        "the Brier score of the inclusion probabilities against the true support "
        "and the mean inclusion of the true and of the false terms. Issue 15's targets: "
        "coverage 0.90-0.98, coefficient coverage ≥ 0.9, true terms ≥ 0.8, false terms ≤ 0.2.",
        "",
        calibration_table(rows),
        "",
        "The same per system, with the number of seeds the cells span (a system's cells of one "
        "seed share its noise, so they are not independent draws; `suite=calibration` runs "
        "the base scenario over ten seeds):",
        "",
        calibration_by_system(rows),
        "",
        "## Methods × challenges",
        "",
        "Each entry: mean term-inclusion F1 over the challenge's cells · the same on the terms "
        "the prior knowledge does not give / median forecast NMSE (from a new initial state "
        "over twice the training window; ∞: the forecast failed or blew up). `node` gives no "
        "equations, so only its NMSE shows.",
        "",
        challenge_table(rows),
        "",
        *(
            [
                "The same over the scenarios every method has a result for (like with like):",
                "",
                challenge_table(matched(rows)),
                "",
            ]
            if len(matched(rows)) < len(rows)
            else []
        ),
        "## `ude` against each baseline, per axis",
        "",
        "F1 counts every term of the right-hand sides, the ones the prior knowledge gives "
        "included; *F1 unknown terms* leaves out the terms of the (uncorrupted) known spec, "
        "for every method, and scores discovery alone. By discovery: ahead / behind when the "
        f"mean F1 on unknown terms differs by at least {LEVEL}; by forecast: when the median "
        "forecast NMSE differs by a factor of 2. Each line compares the two methods on the "
        "scenarios both have results for (*cells*: how many).",
        "",
        comparison_note(rows) or comparison_table(rows),
        "",
        *(
            [
                "## Before and after distillation",
                "",
                "The trained hybrid model's forecast (networks in place) against the distilled "
                "twin's, on the same task: a gap says the distillation lost the forecast; two "
                "bad numbers say the training did.",
                "",
                hybrid_table(rows),
                "",
            ]
            if hybrid_table(rows)
            else []
        ),
        "## Per axis",
        "",
        "Each entry: mean F1 · exact-recovery rate · median forecast NMSE.",
        "",
    ]
    axes = _axes(rows)
    for axis in axes:
        parts += [f"### {axis}", "", axis_table(rows, axis), ""]
    if curves:
        parts += [
            "## Curves",
            "",
            "On the scenarios every method has results for.",
            "",
            f"![recovery and forecast per axis](plots/{curves.name})",
            "",
        ]
    if heat:
        parts += ["## Heatmaps", "", f"![methods × systems](plots/{heat.name})", ""]
    if errors:
        parts += ["## Failed cells", ""]
        parts += [f"- `{r['id']}` ({r['axis']}={r['value']}): {r['error']}" for r in errors]
        parts.append("")
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path
