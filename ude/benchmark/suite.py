"""Suites: the cells of a benchmark (system x axis value x method x seed), running them with
resume, and the results table (JSON lines, one file per shard).

A suite varies one axis at a time from a base scenario: for each system, the base cell plus one
cell per value of each axis (the base value is not repeated). Each cell has an id built from its
scenario and method; a run skips every cell whose id is already in a results file of the output
folder, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ude.benchmark.methods import METHODS, Method, MethodResult
from ude.benchmark.metrics import (
    aligned,
    band_scores,
    coefficient_coverage,
    coefficient_error,
    exact_recovery,
    forecast_nmse,
    inclusion_brier,
    support_f1,
    term_matrix,
)
from ude.benchmark.scenario import Problem, Scenario, build_problem
from ude.errors import UdeError
from ude.progress import Progress
from ude.systems import get_system

AXES = ("noise", "n_times", "replicates", "conditions", "unobserved", "corruption", "library")
"""Scenario fields a suite may sweep; the system (and its dimension) is the eighth axis."""


@dataclass(frozen=True)
class Cell:
    """One benchmark cell: a scenario, the axis it varies (``base`` for none) and a method."""

    scenario: Scenario
    axis: str
    method: str

    @property
    def id(self) -> str:
        return f"{self.scenario.system}/{self.method}/{self.scenario.key()}"


def expand(
    systems: Sequence[str],
    methods: Sequence[str],
    axes: Mapping[str, Sequence[Any]],
    base: Mapping[str, Any] | None = None,
    seeds: Sequence[int] = (0,),
) -> list[Cell]:
    """All cells of a one-axis-at-a-time design (see the module docstring)."""
    base = dict(base or {})
    allowed = {f.name for f in fields(Scenario)} - {"system", "seed"}
    for key in [*base, *axes]:
        if key not in allowed:
            raise UdeError(
                f"'{key}' is not a scenario axis",
                source="benchmark",
                where="suite",
                fix="axes: " + ", ".join(AXES),
            )
    cells: list[Cell] = []
    seen: set[str] = set()
    for system in systems:
        for seed in seeds:
            start = Scenario(system=system, seed=seed, **base)
            scenarios = [("base", start)]
            for axis, values in axes.items():
                for v in values:
                    scenarios.append((axis, replace(start, **{axis: v})))
            for axis, sc in scenarios:
                sc.validate()
                for m in methods:
                    cell = Cell(sc, axis, m)
                    if cell.id not in seen:
                        seen.add(cell.id)
                        cells.append(cell)
    return cells


def score(cell: Cell, problem: Problem, result: MethodResult) -> dict[str, Any]:
    """The metrics of one cell's result against the truth."""
    truth = term_matrix(problem.truth)
    # the terms the prior knowledge gives (uncorrupted): F1 on the rest scores discovery alone
    given = set(term_matrix(get_system(cell.scenario.system).known))
    row: dict[str, Any] = {"seconds": round(result.seconds, 3)}
    if result.spec is not None:
        found = aligned(term_matrix(result.spec), truth)
        row["f1"] = support_f1(found, truth)
        row["f1_unknown"] = support_f1(
            {k: c for k, c in found.items() if k not in given},
            {k: c for k, c in truth.items() if k not in given},
        )
        row["exact"] = exact_recovery(found, truth)
        row["coef_error"] = coefficient_error(found, truth)
        row["n_terms"] = len(found)
        row["terms"] = {f"{s}: {b}": round(c, 6) for (s, b), c in found.items()}
        oracle = result.info.get("oracle")
        if oracle:  # the truth as a candidate, where the structure is not exact
            row["oracle"] = oracle["verdict"]
            if "delta" in oracle:
                row["oracle_delta"] = round(oracle["delta"], 3)
        found_by_parsimony = parsimony_terms(result.info)
        if found_by_parsimony is not None:
            row["by_parsimony"] = found_by_parsimony
    elif result.info.get("distill_error"):
        # a method that discovers equations and found none: every true term missed
        row.update(f1=0.0, f1_unknown=0.0, exact=False, n_terms=0, terms={})
        row["coef_error"] = coefficient_error({}, truth)
    true_fc = problem.true_forecast()
    obs = [s for s in problem.observed if s in result.forecast_states]
    cols_true = [problem.truth.states.index(s) for s in obs]
    cols_mine = [result.forecast_states.index(s) for s in obs]
    pred = None if result.forecast is None else result.forecast[:, cols_mine]
    row["forecast_nmse"] = forecast_nmse(pred, true_fc[:, cols_true])
    for name, other in result.other_forecasts.items():
        fc = None if other is None else other[:, cols_mine]
        row[f"forecast_nmse_{name}"] = forecast_nmse(fc, true_fc[:, cols_true])
    if result.lower is not None and result.upper is not None:
        lo, hi = result.lower[:, cols_mine], result.upper[:, cols_mine]
        row.update(band_scores(lo, hi, true_fc[:, cols_true]))
    # calibration of the structure: a method with prior knowledge is judged on the terms it
    # had to find (the known ones are given)
    unknown = {k: c for k, c in truth.items() if k not in given}
    judged = unknown if _uses_prior(cell) else truth
    if result.info.get("intervals"):
        row["coef_coverage"] = coefficient_coverage(result.info["intervals"], judged)
    if result.info.get("intervals_chosen"):  # ude's, given the twin's structure
        row["coef_coverage_chosen"] = coefficient_coverage(result.info["intervals_chosen"], judged)
    if result.info.get("inclusion"):
        row.update(inclusion_brier(result.info["inclusion"], judged))
    if result.info.get("inclusion_horseshoe"):  # ude's horseshoe (distill.uq), beside them
        scores = inclusion_brier(result.info["inclusion_horseshoe"], judged)
        row.update({f"{k}_horseshoe": v for k, v in scores.items()})
    row["info"] = result.info
    return row


def _uses_prior(cell: Cell) -> bool:
    cls = METHODS.get(cell.method)
    return bool(cls is not None and cls.uses_prior)


def run_cell(cell: Cell, method: Method) -> dict[str, Any]:
    """Build the cell's problem, fit the method and score it; errors become a row too."""
    row: dict[str, Any] = {
        "id": cell.id,
        "system": cell.scenario.system,
        "dimension": len(get_system(cell.scenario.system).truth.states),
        "axis": cell.axis,
        "value": getattr(cell.scenario, cell.axis) if cell.axis != "base" else None,
        "method": cell.method,
        **asdict(cell.scenario),
    }
    start, cpu = time.perf_counter(), time.process_time()
    try:
        problem = build_problem(cell.scenario)
        row.update(score(cell, problem, method.fit(problem)))
        row.update({f"{k}_note": v for k, v in problem.info.items()})
    except UdeError:
        raise
    except Exception as err:  # noqa: BLE001 - one failing cell must not stop a suite
        row["error"] = f"{type(err).__name__}: {err}"
        row["traceback"] = traceback.format_exc(limit=3)
        row["seconds"] = round(time.perf_counter() - start, 3)
    # the cell's CPU time, all threads (wall time says little on a shared machine; with n
    # threads it can reach n times the wall time)
    row["cpu_seconds"] = round(time.process_time() - cpu, 3)
    return row


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.bool_):
        return bool(x)
    return str(x)


def _clean(v: Any) -> Any:
    """JSON has no inf: write it as the string 'inf'."""
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


def parsimony_terms(info: Mapping[str, Any]) -> str | None:
    """The terms whose absence alone identifies some of the twin's parameters
    (:func:`ude.distill.identifiability.identified_by_parsimony`, in ``info``'s
    identifiability report), as ``"target +term; ..."``; ``"none"`` where none does, None
    where the check did not run (rows of code before it)."""
    rows = (info.get("identifiability") or {}).get("by_parsimony")
    if rows is None:
        return None
    return "; ".join(f"{r['target']} +{r['term']}" for r in rows) or "none"


def read_results(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every row of every ``results*.jsonl`` in ``out_dir`` (the last row of an id wins)."""
    rows: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(out_dir).glob("results*.jsonl")):
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interruption
                continue
            for k, v in row.items():
                if v in ("inf", "-inf", "nan") and (
                    k.startswith("forecast_nmse") or k == "coef_error"
                ):
                    row[k] = float(v)
            if row.get("axis") == "corruption" and row.get("corruption") != row.get("value"):
                # rows written before the note had its own key: the note replaced the value
                row["corruption_note"], row["corruption"] = row["corruption"], row["value"]
            if "by_parsimony" not in row:  # rows made before the column, with the check
                found = parsimony_terms(row.get("info") or {})
                if found is not None:
                    row["by_parsimony"] = found
            rows[row["id"]] = row
    return list(rows.values())


def code_version() -> dict[str, Any]:
    """The code a result was made with: the git commit and whether tracked files differ from
    it (``dirty``); ``commit`` None outside a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def processor() -> str:
    """The processor a result was made on: its model name (Linux's ``/proc/cpuinfo``, else
    :func:`platform.processor`) and the vector instructions torch's CPU kernels use. The
    same cell on the same code path can differ in its last digits between machines
    (Lotka-Volterra's 30 %-noise cell: forecast NMSE 0.8922269271893033 in one session,
    0.8922269271892438 in the next, 0.892226927189403 with torch held to AVX2), and where a
    result hangs on those digits by more (the same cell's band: width 43.9 and 21.7 ranges)."""
    import platform

    import torch

    name = ""
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        name = names[0] if names else ""
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def run_suite(
    cells: Iterable[Cell],
    methods: Mapping[str, Method],
    out_dir: str | Path,
    shard: int = 0,
    n_shards: int = 1,
    log: Any = print,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Run this shard's cells not already in ``out_dir``'s results; returns the new rows.
    ``progress`` shows the cell running and how many are done."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = {r["id"] for r in read_results(out)}
    mine = [c for i, c in enumerate(cells) if i % n_shards == shard]
    todo = [c for c in mine if c.id not in done]
    log(f"benchmark: {len(mine)} cells in this shard, {len(mine) - len(todo)} already done")
    path = out / f"results-{shard}of{n_shards}-{os.getpid()}.jsonl"
    version, cpu = code_version(), processor()
    rows = []
    stage = (progress or Progress()).start("cells", total=len(todo))
    for i, cell in enumerate(todo, 1):
        stage.describe(f"{cell.scenario.system} {cell.axis} {cell.method}")
        if cell.method not in methods:
            raise UdeError(
                f"unknown method '{cell.method}'",
                source="benchmark",
                where="suite.methods",
                fix="methods: " + ", ".join(methods),
            )
        row = run_cell(cell, methods[cell.method])
        row["code_version"], row["machine"] = version, cpu
        with path.open("a") as fh:
            fh.write(json.dumps(_clean(row), default=_json_default) + "\n")
        rows.append(row)
        where = cell.axis if cell.axis == "base" else f"{cell.axis}={row['value']}"
        status = (
            row.get("error")
            or (f"F1 {row['f1']:.2f} " if "f1" in row else "")
            + f"forecast NMSE {row.get('forecast_nmse', math.inf):.3g}"
        )
        log(
            f"[{i}/{len(todo)}] {cell.scenario.system} {where} "
            f"{cell.method}: {status} ({row['seconds']:.1f} s)"
        )
        stage.advance()
    stage.close()
    return rows


def default_methods() -> dict[str, Method]:
    """One instance of each built-in method with its default settings."""
    return {name: cls() for name, cls in METHODS.items()}
