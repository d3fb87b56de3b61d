"""Reliability of `ude`'s inclusion probabilities over a benchmark run: every term a cell's
inclusion probabilities score (:func:`ude.benchmark.metrics.inclusion_scores`: the terms the
twin's structures hold, and the true terms, a true term no structure holds at 0), binned by
its probability, with the share of them that are true. A calibrated probability p is true
about a share p of the time. Shown over all cells, over the cells whose twin is exact and
over the rest (where docs/benchmark.md's oracle finds the data preferring the twin).

The rows are a benchmark run's ``results*.jsonl`` (their ``info.inclusion``; the table's CSV
does not keep it). With ``--table CSV``, only the rows of the table: the same id and commit,
the last such row of the folders given. Each cell's true support is read again from its
scenario (:func:`ude.benchmark.scenario.build_problem`), judged on the terms the prior does
not give, as the benchmark's Brier score is. Printed, not asserted.

    python bench/inclusion_reliability.py DIR... [--table docs/benchmark_standard.csv]
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BINS = (0.0, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0)


def rows(folders: list[str], table: str | None) -> list[dict]:
    """The ``ude`` rows with inclusion probabilities of ``folders``' results
    (:func:`ude.benchmark.suite.read_results`), the last of each id; with ``table``, only
    those whose id and commit are the table's."""
    from ude.benchmark.suite import read_results

    wanted = None
    if table:
        with open(table) as f:
            wanted = {r["id"]: r["commit"] for r in csv.DictReader(f) if r["method"] == "ude"}
    found: dict[str, dict] = {}
    for folder in folders:
        for r in read_results(folder):
            if r.get("method") != "ude" or not r.get("info", {}).get("inclusion"):
                continue
            commit = (r.get("code_version") or {}).get("commit", "")[:10]
            if wanted is None or wanted.get(r["id"]) == commit:
                found[r["id"]] = r
    if wanted is not None and len(found) < len(wanted):
        print(f"{len(wanted) - len(found)} of the table's {len(wanted)} ude rows not found")
    return list(found.values())


def pairs(row: dict) -> list[tuple[float, bool]]:
    """``(probability, the term is true)`` for each term the row's inclusion scores."""
    from ude.benchmark.metrics import inclusion_scores, term_matrix
    from ude.benchmark.scenario import Scenario, build_problem
    from ude.systems import get_system

    problem = build_problem(Scenario(**{f.name: row[f.name] for f in fields(Scenario)}))
    given = set(term_matrix(get_system(row["system"]).known))
    judged = {k: c for k, c in term_matrix(problem.truth).items() if k not in given}
    scored = inclusion_scores(row["info"]["inclusion"], judged)
    return [(p, k in judged) for k, p in scored.items()]


def table(scored: list[tuple[float, bool]], title: str) -> None:
    p = np.array([s[0] for s in scored])
    true = np.array([s[1] for s in scored])
    print(f"\n{title}: {len(p)} terms, {int(true.sum())} true")
    print("probability  | terms | mean probability | share true")
    for lo, hi in zip(BINS[:-1], BINS[1:], strict=True):
        inside = (p > lo) & (p <= hi) if lo > 0 else (p <= hi)
        left = "(" if lo > 0 else "["
        if inside.any():
            print(
                f"{left}{lo:.2f}, {hi:.2f}] | {int(inside.sum()):5d} | "
                f"{p[inside].mean():16.3f} | {true[inside].mean():10.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="benchmark out_dirs (results*.jsonl)")
    parser.add_argument("--table", help="keep only this results CSV's ude rows (id and commit)")
    args = parser.parse_args()
    found = rows(args.folders, args.table)
    by_exact: dict[bool, list[tuple[float, bool]]] = {True: [], False: []}
    for r in found:
        by_exact[bool(r.get("exact"))] += pairs(r)
    n_exact = sum(bool(r.get("exact")) for r in found)
    print(f"{len(found)} ude rows, {n_exact} exact")
    table(by_exact[True] + by_exact[False], "all cells")
    table(by_exact[True], "cells whose twin is exact")
    table(by_exact[False], "cells whose twin is not exact")


if __name__ == "__main__":
    main()
