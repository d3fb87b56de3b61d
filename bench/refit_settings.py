"""The selection's refits under other settings, side by side: one benchmark cell's refits
replayed as they ran and under each variant, in one run.

    OMP_NUM_THREADS=1 python bench/refit_settings.py                  # yeast, 4 conditions
    OMP_NUM_THREADS=1 python bench/refit_settings.py --variant criterion_tol=1.0 \\
        --variant rtol=1e-5 --system goldbeter --conditions 8
    OMP_NUM_THREADS=1 python bench/refit_settings.py --variant optimizer=gauss_newton --each

The network of the benchmark's cell (5 % noise, 30 time points, seed 0) is trained as
``python train.py`` trains it and distilled with the product's defaults, every
:meth:`ude.distill.refit.TwinRefit.fit` call kept with its inputs (the selection's scoring
refits, the final refit, the oracle's and the bootstrap's). Each is then run again with the
settings it ran with (the base, timed here beside the variants) and with each variant's
settings changed (``key=value,key=value``: :class:`ude.distill.refit.TwinRefit`'s arguments).

Printed per variant: the CPU of all refits and its ratio to the base's; how far each refit's
criterion data term (``n log(nmse)``: the criterion less its penalty, which a variant leaves
as it is) moved from the base's, at most and among the refits within 30 units of the best;
how many moved by more than the selection's ``tolerance`` (its choices are that far apart),
how many of those to a better fit and how many to a worse, and the most a refit got worse;
and whether the best refit and the refits within ``tolerance`` of it are the same ones. A
refit replayed alone starts where it started in the selection: a variant that moves the
selection's first choices would also change which candidates come after, so a variant that
keeps the near-best criteria within a unit or two is one worth running through the
benchmark, not one that is known to choose the same twins.

Nothing is asserted: the figures are printed.
"""

from __future__ import annotations

import argparse
import inspect
import os
import pickle
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")

from ude.distill.refit import TwinRefit  # noqa: E402

NEAR = 30.0
"""Criterion units from the best within which a refit's change is reported apart."""


@dataclass
class Captured:
    """One :meth:`TwinRefit.fit` call: the refitter's settings, its inputs, and its outcome
    (``criterion``: ``n log(nmse)``, inf where the refit failed)."""

    settings: dict
    twin: object
    args: tuple
    kwargs: dict
    criterion: float


def data_term(nmse: float, ok: bool, n: int) -> float:
    """``n log(nmse)``: a criterion less its penalty (inf for a failed refit)."""
    return float(n * np.log(nmse)) if ok and np.isfinite(nmse) and nmse > 0 else np.inf


@contextmanager
def capturing(measurements):
    """Keep every :meth:`TwinRefit.fit` call on ``measurements`` made inside (the selection's
    refits run in threads): yields the list they are appended to."""
    calls: list[Captured] = []
    lock = threading.Lock()
    original = TwinRefit.fit
    n = int(np.isfinite(measurements.values).sum())

    def fit(self, twin, data, *args, **kwargs):
        result = original(self, twin, data, *args, **kwargs)
        if data is measurements:
            entry = Captured(
                dict(vars(self)), twin, args, kwargs, data_term(result.nmse, result.ok, n)
            )
            with lock:
                calls.append(entry)
        return result

    TwinRefit.fit = fit
    try:
        yield calls
    finally:
        TwinRefit.fit = original


def parse_variant(text: str) -> dict:
    """``"criterion_tol=1.0,rtol=1e-5"`` -> ``{"criterion_tol": 1.0, "rtol": 1e-05}`` (each
    value read as YAML: numbers, booleans, null)."""
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"refit_settings.py: variant '{text}': write key=value")
        value = yaml.safe_load(value)
        out[key.strip()] = float(value) if isinstance(value, str) and _number(value) else value
    return out


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def replay(calls: list[Captured], measurements, changes: dict) -> list[tuple[float, float]]:
    """``(criterion, CPU seconds)`` of each call run again with its settings and ``changes``."""
    n = int(np.isfinite(measurements.values).sum())
    out = []
    for call in calls:
        unknown = set(changes) - set(inspect.signature(TwinRefit).parameters)
        if unknown:
            raise SystemExit(f"refit_settings.py: TwinRefit has no setting {sorted(unknown)}")
        refitter = TwinRefit(**{**call.settings, **changes})
        start = time.process_time()
        result = refitter.fit(call.twin, measurements, *call.args, **call.kwargs)
        out.append((data_term(result.nmse, result.ok, n), time.process_time() - start))
    return out


def compare(base: list[float], other: list[float], tolerance: float) -> dict:
    """How far ``other``'s criteria moved from ``base``'s (refit by refit)."""
    b, o = np.array(base), np.array(other)
    both = np.isfinite(b) & np.isfinite(o)
    if not both.any():
        return {"solved": 0}
    signed = o[both] - b[both]  # below zero: the variant fits better
    moved = np.abs(signed)
    best_b, best_o = np.min(b[np.isfinite(b)]), np.min(o[np.isfinite(o)])
    near = (b < best_b + NEAR)[both]
    return {
        "solved": int(both.sum()),
        "failed_apart": int(np.sum(np.isfinite(b) != np.isfinite(o))),
        "max_moved": float(moved.max()),
        "max_moved_near": float(moved[near].max()),
        "over_tolerance": int(np.sum(moved > tolerance)),
        "better": int(np.sum(signed < -tolerance)),
        "worse": int(np.sum(signed > tolerance)),
        "max_worse": float(max(signed.max(), 0.0)),
        "same_best": bool(np.argmin(b) == np.argmin(o)),  # a failed refit's inf is last
        "same_near_set": bool(
            set(np.flatnonzero(b <= best_b + tolerance))
            == set(np.flatnonzero(o <= best_o + tolerance))
        ),
    }


def _capture(problem, cfg, args) -> tuple[list[Captured], list[tuple[float, float]]]:
    """Train and distil the cell's network, keeping its refits, and replay them as they ran
    (written to ``args.calls`` when given)."""
    from ude.benchmark.methods import train_as_train_py
    from ude.distill.cli import make_distiller

    data = problem.measurements
    start = time.perf_counter()
    model, _ = train_as_train_py(cfg, problem.known, data)
    print(f"{args.system}, {args.conditions} conditions: trained in "
          f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
    start = time.perf_counter()
    with capturing(data) as calls:
        result = make_distiller(cfg.distill).fit(model, data)
    twin = ", ".join(f"{k}: {v}" for k, v in result.twin.discovered.items())
    print(f"distilled in {time.perf_counter() - start:.0f} s, {len(calls)} refits; twin: {twin}")
    base = replay(calls, data, {})
    same = sum(
        c.criterion == b or not (np.isfinite(c.criterion) or np.isfinite(b))
        for c, (b, _) in zip(calls, base, strict=True)
    )
    cpu = sum(t for _, t in base)
    print(f"base replayed: {same} of {len(calls)} refits reproduce their criterion exactly; "
          f"CPU {cpu:.1f} s\n")  # fmt: skip
    if args.calls is not None:
        with args.calls.open("wb") as f:
            pickle.dump((calls, base), f)
    return calls, base


def main() -> None:
    from ude.benchmark.methods import composed_config
    from ude.benchmark.scenario import Scenario, build_problem

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="yeast_glycolysis")
    parser.add_argument("--conditions", type=int, default=4)
    parser.add_argument(
        "--variant", action="append", default=[], help="key=value,... (default: criterion_tol=1.0)"
    )
    parser.add_argument(
        "--each", action="store_true", help="also print each refit's criterion and CPU per variant"
    )
    parser.add_argument(
        "--calls",
        type=Path,
        help="a file keeping the captured refits and the base's replay: read where it exists "
        "(no training, distillation or base replay), else written",
    )
    args = parser.parse_args()
    variants = [(text, parse_variant(text)) for text in args.variant or ["criterion_tol=1.0"]]
    torch.set_num_threads(1)
    problem = build_problem(Scenario(args.system, n_times=30, conditions=args.conditions))
    data = problem.measurements
    cfg = composed_config(problem, [])
    tolerance = float(cfg.distill.distiller.selector.tolerance)
    if args.calls is not None and args.calls.exists():
        with args.calls.open("rb") as f:
            calls, base = pickle.load(f)
        print(f"{len(calls)} refits and their base replay read from {args.calls}")
    else:
        calls, base = _capture(problem, cfg, args)
    cpu = sum(t for _, t in base)

    print(
        "| variant | CPU s | × base | refits solved | failed in one only | max moved | "
        f"max moved within {NEAR:g} of the best | moved > {tolerance:g} (better, worse) | "
        "most worse | same best | same refits within tolerance of the best |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    runs = []
    for text, changes in variants:
        out = replay(calls, data, changes)
        runs.append((text, out))
        seconds = sum(t for _, t in out)
        c = compare([b for b, _ in base], [o for o, _ in out], tolerance)
        if not c["solved"]:
            print(f"| {text} | {seconds:.1f} | {seconds / cpu:.2f} | 0 | | | | | | | |")
            continue
        print(f"| {text} | {seconds:.1f} | {seconds / cpu:.2f} | {c['solved']} | "
              f"{c['failed_apart']} | {c['max_moved']:.2f} | {c['max_moved_near']:.2f} | "
              f"{c['over_tolerance']} ({c['better']}, {c['worse']}) | {c['max_worse']:.2f} | "
              f"{'yes' if c['same_best'] else 'no'} | "
              f"{'yes' if c['same_near_set'] else 'no'} |", flush=True)  # fmt: skip
    if args.each:
        columns = " | ".join(f"{text} criterion | CPU s" for text, _ in runs)
        print(f"\n| refit | solver | base criterion | base CPU s | {columns} | twin |")
        print("|---|---|---|---|" + "---|---|" * len(runs) + "---|")
        for i, (call, (b, t)) in enumerate(zip(calls, base, strict=True)):
            cells = " | ".join(f"{out[i][0]:.2f} | {out[i][1]:.2f}" for _, out in runs)
            terms = "; ".join(str(v) for v in call.twin.discovered.values())[:70]
            print(f"| {i} | {call.settings.get('method', '')} | {b:.2f} | {t:.2f} | {cells} "
                  f"| {terms} |")  # fmt: skip


if __name__ == "__main__":
    main()
