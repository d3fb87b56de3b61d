"""What a distillation leaves in the run directory: twin.json, equations.md, distill.json,
the comparison and forecast plots; and its errors against a known truth."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sympy as sp
import torch

from ude.benchmark.metrics import aligned, expression_terms, numeric, state_nmse
from ude.data.measurements import Measurements
from ude.data.splits import Split
from ude.distill.distiller import Distillation
from ude.distill.selection import NoSolvableTwin
from ude.distill.uncertainty import ForecastInterval, LaplaceInterval
from ude.fit import forecast_errors
from ude.model.hybrid import HybridODE, build_hybrid
from ude.model.solver import Solver
from ude.progress import Progress
from ude.spec.compile import CompiledExpressions
from ude.spec.model_spec import ModelSpec
from ude.spec.simulate import simulate_spec
from ude.twin.symbolic import equations_markdown, for_conditions
from ude.twin.twin import Twin


def compare_with_truth(twin: ModelSpec, truth_spec: ModelSpec, missing: dict) -> dict[str, Any]:
    """Structure and coefficient errors of the discovered terms against the true missing
    terms, term by term as the benchmark counts them (:func:`expression_terms`: a rational
    term is the same term whatever its constant): ``exact`` when every state has exactly the
    true terms."""
    per_state, errors, exact = {}, [], True
    for s, true_expr in missing.items():
        true = expression_terms(numeric(true_expr, truth_spec))
        discovered = numeric(twin.discovered.get(s, sp.Integer(0)), twin)
        found = aligned(expression_terms(discovered), true)
        same = set(true) == set(found)
        exact &= same
        rel = {b: abs(found[b] - c) / abs(c) for b, c in true.items() if b in found and c != 0}
        errors += list(rel.values())
        per_state[s] = {
            "true": {b: round(c, 6) for b, c in true.items()},
            "found": {b: round(c, 6) for b, c in found.items()},
            "exact": same,
            "relative_error": {b: round(e, 6) for b, e in rel.items()},
        }
    return {
        "exact": bool(exact),
        "max_relative_error": float(max(errors)) if errors else None,
        "median_relative_error": float(np.median(errors)) if errors else None,
        "states": per_state,
    }


def forecast(
    twin: ModelSpec, initial: np.ndarray, measurements: Measurements, horizon: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Times ``(time,)``, the twin's states ``(condition, time, state)`` from ``initial`` over
    ``horizon`` times the data's span (NaN from where its solve fails), and the true states
    when the data are synthetic."""
    t0, t1 = float(measurements.times[0]), float(measurements.times[-1])
    times = np.linspace(t0, t0 + horizon * (t1 - t0), int(200 * horizon) + 1)
    doses = measurements.schedules()  # each condition with its doses and its own values
    states = simulate_spec(
        twin, initial, times, measurements.inputs, rtol=1e-8, atol=1e-10, doses=doses
    )
    truth = None
    if measurements.truth is not None:
        tr = measurements.truth
        truth = simulate_spec(
            tr.spec, tr.initial, times, measurements.inputs, rtol=1e-8, atol=1e-10, doses=doses
        )
        truth = truth[..., [tr.spec.states.index(s) for s in twin.states]]
    return times, states, truth


def held_out_errors(twin: ModelSpec, initial: np.ndarray, held_out: HeldOut) -> dict[str, Any]:
    """The twin's errors on the held-out entries (:func:`ude.fit.forecast_errors`, normalised
    by the training entries' scale, as the UDE's ``forecast`` in metrics.json), simulated from
    ``initial (condition, state)`` over every condition of the data. An entry the twin cannot
    predict (its solve failed before it) makes the errors infinite."""
    m, split = held_out.measurements, held_out.split
    # a distilled condition with its own values, the others with the typical ones
    twin = for_conditions(
        twin,
        [held_out.kept.index(c) if c in held_out.kept else None for c in range(m.n_conditions)],
    )
    states = simulate_spec(
        twin, initial, m.times, m.inputs, rtol=1e-8, atol=1e-10, doses=m.schedules()
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = build_hybrid(twin, m, Solver())
    finally:
        torch.set_default_dtype(previous)
    cond = torch.arange(m.n_conditions)
    with torch.no_grad():
        obs = model.observe(torch.as_tensor(states), cond).numpy()
    resid = (m.values - obs[:, :, None, :]) / held_out.scale
    resid = np.where(np.isfinite(obs)[:, :, None, :], resid, np.inf)
    out = forecast_errors(resid, m, split)
    out["failed"] = bool(not np.isfinite(resid[split.held_out]).all())
    return out


def distilled_terms(
    twin: ModelSpec, samples_X: np.ndarray, names: list[str], context: np.ndarray
) -> np.ndarray:
    """The twin's discovered terms ``(sample, state)`` at ``samples_X (sample, state+input)``
    with parameter values ``context (parameter,)``."""
    f = CompiledExpressions(
        [twin.discovered.get(s, sp.Integer(0)) for s in twin.states], [*names, *twin.parameters]
    ).double()
    values = np.concatenate(
        [samples_X, np.broadcast_to(context, (len(samples_X), len(context)))], 1
    )
    with torch.no_grad():
        return f(torch.tensor(values)).numpy()


STATUSES = {
    "ok": "the twin was refitted, its forecast and its band were computed",
    "twin_unsolvable": "no candidate twin's refit could be solved over the data: no twin",
    "forecast_failed": "the twin's solve failed over the forecast window or the held-out data",
    "band_failed": "the forecast band could not be computed, or more than half its draws failed",
}
"""The ``status`` of distill.json (the first failure in this order; ``failures`` lists all)."""

REPORT_FILES = (
    "twin.json",
    "twin.sbml",
    "sbml",
    "equations.md",
    "plots/distilled_terms.png",
    "plots/forecast.png",
)
"""What a distillation writes into the run directory beside distill.json."""


@dataclass
class HeldOut:
    """What the twin is judged on after a distillation on the training entries alone: all the
    data ``measurements``, their ``split``, the training entries' observable ``scale
    (observable,)``, the trained model's initial states ``initial (condition, state)`` (the
    start of a held-out condition) and the data's indices of the distilled conditions
    ``kept``."""

    measurements: Measurements
    split: Split
    scale: np.ndarray
    initial: np.ndarray
    kept: list[int]


def write_report(
    result: Distillation,
    trained: HybridODE,
    measurements: Measurements,
    run_dir: str | Path,
    horizon: float = 10.0,
    interval: LaplaceInterval | None = None,
    held_out: HeldOut | None = None,
    progress: Progress | None = None,
    uq: dict[str, Any] | None = None,
    mixture: Any = None,
) -> dict[str, Any]:
    """Writes twin.json, twin.sbml, equations.md, distill.json and plots/distilled_terms.png,
    plots/forecast.png into ``run_dir``; returns the metrics, with their ``status`` and
    ``failures`` (:data:`STATUSES`). ``measurements``: the data distilled on; with
    ``interval``, the forecast gets its band (see :func:`forecast_band`); with ``held_out``,
    the twin's errors on the held-out entries (``held_out`` in the metrics), and the forecast
    plot marks them when every condition was distilled; ``uq``: distill.json's ``uq``
    section (:func:`ude.uq.bayesian_terms`); ``mixture``: a :class:`ude.uq.StructureMixture`,
    whose predictive band (averaged over the structures, with observation noise) is the
    forecast's band, and the twin's coefficients get credible intervals."""
    from ude.distill.plots import plot_distilled_terms, plot_forecast

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    twin = result.twin
    rows = result.path_rows()
    found = result.structure_bootstrap  # ude.uq.structure_bootstrap: the data resampled
    if found is not None:
        for row, s in zip(rows, result.path, strict=True):
            row["bootstrap_share"] = round(found.share.get(s.candidate.support(), 0.0), 4)
            row["bootstrap_weight"] = round(found.weight.get(s.candidate.support(), 0.0), 4)
    weights = model_weights(rows, result, prefer=getattr(mixture, "weights", "bootstrap"))
    intervals, constants, intervals_cpu, averaged, left_out = {}, {}, None, {}, 0.0
    if mixture is not None:
        from ude.uq.intervals import (
            averaged_intervals,
            averaged_markdown,
            coefficient_intervals,
            constant_intervals,
            intervals_markdown,
        )

        cpu = time.process_time()
        intervals = coefficient_intervals(result, measurements, mixture.level)
        constants = constant_intervals(result, measurements, mixture.level)
        averaged, left_out = averaged_intervals(result, measurements, mixture)
        intervals_cpu = round(time.process_time() - cpu, 3)
    ties = result.tie_rows()
    markdown = equations_markdown(
        twin,
        trained.spec,
        rows,
        result.inclusion,
        ties=ties,
        identifiability=result.identifiability,
        conditions=measurements.conditions,
    )
    credible = {**intervals, **constants}  # per parameter: coefficients, then constants
    if credible:
        markdown += "\n" + intervals_markdown(intervals, mixture.level, constants)
    if averaged:
        markdown += "\n" + averaged_markdown(averaged, mixture.level, left_out)
    (run_dir / "equations.md").write_text(markdown)
    initial = result.model.initial.detach().cpu().numpy()
    times, states, truth = forecast(twin, initial, measurements, horizon)
    failures: list[dict[str, str]] = []
    solved = np.isfinite(states).all(axis=(0, 2))
    if not solved.all():
        failures.append(
            {
                "status": "forecast_failed",
                "why": f"the twin's solve stopped at t={times[np.argmin(solved)]:.4g} of the "
                f"forecast to t={times[-1]:.4g}",
            }
        )
    metrics: dict[str, Any] = {
        "status": "ok",
        "failures": failures,
        "discovered": {},
        "n_terms": result.chosen.candidate.n_terms,
        "trajectory_nmse": result.refit.nmse,
        "criterion": result.chosen.criterion,
        "timings": dict(result.timings),
        "path": rows,
        "model_weights": weights,
        "ties": ties,
        "identifiability": result.identifiability,
        "forecast_horizon": float(times[-1]),
    }
    if held_out is not None and held_out.split.has_held_out:
        start = held_out.initial.copy()
        start[held_out.kept] = initial
        metrics["held_out"] = held_out_errors(twin, start, held_out)
        if metrics["held_out"]["failed"]:
            failures.append(
                {
                    "status": "forecast_failed",
                    "why": "the twin's solve failed before some held-out entries",
                }
            )
    band = None
    if interval is not None:
        start = time.perf_counter()
        with (progress or Progress()).stage("band"):
            band, metrics["forecast_interval"] = forecast_band(
                interval, result, measurements, times, twin.states, truth
            )
        metrics["timings"]["interval_seconds"] = round(time.perf_counter() - start, 3)
        info = metrics["forecast_interval"]
        if band is None or not band.usable:
            why = info.get("error") or f"{info['n_failed']} of {info['n_samples']} draws failed"
            if info.get("n_prior_bounded"):  # the draws' spread came from the ranges there
                why += (
                    f" ({info['n_prior_bounded']} parameter directions bounded by the "
                    "parameters' ranges, not the data)"
                )
            failures.append({"status": "band_failed", "why": why})
            band = None
    laplace_band = band
    if mixture is not None:
        from ude.uq.report import predictive_band

        start, cpu = time.perf_counter(), time.process_time()
        with (progress or Progress()).stage("predictive band"):
            predictive, metrics["predictive_band"] = predictive_band(
                mixture, result, measurements, times, truth
            )
        metrics["timings"]["predictive_band_seconds"] = round(time.perf_counter() - start, 3)
        metrics["timings"]["predictive_band_cpu_seconds"] = round(time.process_time() - cpu, 3)
        metrics["timings"]["credible_intervals_cpu_seconds"] = intervals_cpu
        metrics["credible_intervals"] = credible
        metrics["term_intervals"] = averaged
        metrics["term_intervals_left_out_weight"] = left_out
        if predictive is not None and predictive.usable:
            band = predictive.for_plot()  # the band for new measurements, unbounded: shaded
    # the product: the Twin, each condition with its values, doses and band (twin.json), and
    # as SBML (twin.sbml; one file per condition under sbml/ with individual parameters)
    product = Twin.from_distillation(
        twin,
        result.model,
        trained.spec,
        measurements,
        None if laplace_band is None else laplace_band.laplace.covariance,
        result.inclusion,
        solver=getattr(result.model.solver, "method", "dopri5"),
    )
    twin_dict = product.to_dict()
    twin_dict["model_weights"] = weights  # the refitted structures, for averaging over them
    if credible:
        twin_dict["credible_intervals"] = {k: e["interval"] for k, e in credible.items()}
    if averaged:
        twin_dict["term_intervals"] = {
            t: {term: e["interval"] for term, e in terms.items()} for t, terms in averaged.items()
        }
    (run_dir / "twin.json").write_text(json.dumps(twin_dict, indent=2))
    product.write_sbml(run_dir)
    metrics["discovered"] = twin_dict["discovered"]
    if product.individual:
        metrics["individual"] = {
            "population": product.population(),
            "conditions": {
                c: twin_dict["conditions"][c]["parameters"] for c in twin_dict["conditions"]
            },
        }
    if result.inclusion is not None:
        metrics["inclusion_probability"] = result.inclusion
    if found is not None:
        metrics["structure_bootstrap"] = found.report(
            result.describe, result.chosen.candidate.support()
        )
    if uq is not None:  # the Bayesian sparse regression (ude.uq.bayesian_terms)
        metrics["uq"] = uq
    if truth is not None:
        nmse = state_nmse(states, truth)
        metrics["forecast_nmse"] = {s: float(v) for s, v in zip(twin.states, nmse, strict=True)}
        tr = measurements.truth
        if tr.missing:
            metrics["truth"] = compare_with_truth(twin, tr.spec, tr.missing)
            if result.oracle is not None:
                metrics["truth"]["oracle"] = result.oracle
    metrics["screened_on"] = result.screened_on
    metrics["screen_misfit"] = result.misfit
    metrics["status"] = _status(failures)
    (run_dir / "distill.json").write_text(json.dumps(metrics, indent=2, default=float))
    plot_distilled_terms(result, run_dir / "plots" / "distilled_terms.png")
    # the plot shows the held-out entries (hollow) beside the data distilled on, when the
    # twin simulates every condition of the data
    shown, split = measurements, None
    if held_out is not None and len(held_out.kept) == held_out.measurements.n_conditions:
        shown, split = held_out.measurements, held_out.split
    plot_forecast(
        times,
        states,
        truth,
        shown,
        twin,
        run_dir / "plots" / "forecast.png",
        None if band is None else band.for_plot(),  # an unbounded part shades the height
        split,
    )
    return metrics


def model_weights(
    rows: list[dict[str, Any]],
    result: Distillation | None = None,
    floor: float = 1e-4,
    prefer: str = "bootstrap",
) -> list[dict[str, Any]]:
    """The refitted structures with their model weights, heaviest first (those above
    ``floor``, or chosen by a resample of the data): what averaging over the candidates
    needs. ``weight`` is the weight the predictive band averages with
    (:func:`ude.uq.mixture.structure_weights` with ``prefer``; ``weight_from`` says which):

    - without the structure bootstrap, each row of the selection's path (``rows``) with its
      evidence weight and criterion;
    - with it (``result.structure_bootstrap``), every structure it refitted (those of the
      path, and those only a resample's screen reached: no ``criterion`` or
      ``evidence_weight``, since the selection never scored them) with its resample-averaged
      evidence weight (``bootstrap_weight``), its share of the resamples' choices
      (``bootstrap_share``) and its evidence weight on the data (``evidence_weight``)."""
    found = None if result is None else result.structure_bootstrap
    if found is None or not found.weight:
        kept = [r for r in rows if r.get("weight", 0.0) > floor]
        return [
            {"discovered": r["terms"], "weight": r["weight"], "weight_from": "evidence"}
            | {"evidence_weight": r["weight"], "criterion": r["criterion"]}
            for r in sorted(kept, key=lambda r: -r["weight"])
        ]
    evidence: dict[Any, float] = {}
    criterion: dict[Any, float] = {}
    for s, r in zip(result.path, rows, strict=True):
        key = s.candidate.support()
        evidence[key] = evidence.get(key, 0.0) + r["weight"]
        criterion.setdefault(key, r["criterion"])
    out = []
    for key, structure in found.structures.items():
        weight, share = found.weight.get(key, 0.0), found.share.get(key, 0.0)
        if weight <= floor and share == 0:
            continue
        scored = result.chosen if key == result.chosen.candidate.support() else None
        shown = weight if prefer == "bootstrap" else evidence.get(key, 0.0)
        out.append(
            {
                "discovered": result.describe(scored or structure.scored()),
                "weight": round(shown, 6),
                "weight_from": prefer,
                "bootstrap_share": round(share, 4),
                "bootstrap_weight": round(weight, 4),
                "evidence_weight": None if key not in evidence else round(evidence[key], 6),
                "criterion": criterion.get(key),
                "refitted_in": structure.origin,
            }
        )
    return sorted(out, key=lambda r: -r["weight"])


def _status(failures: list[dict[str, str]]) -> str:
    found = {f["status"] for f in failures}
    return next((s for s in STATUSES if s in found), "ok")


def write_failure(err: NoSolvableTwin, run_dir: str | Path) -> dict[str, Any]:
    """distill.json of a distillation that found no twin (status ``twin_unsolvable``): why,
    and every candidate tried. The files of an earlier distillation in ``run_dir`` are
    removed: they would read as this one's."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)
        (run_dir / name).unlink(missing_ok=True)
    metrics = {
        "status": "twin_unsolvable",
        "failures": [{"status": "twin_unsolvable", "why": err.reason, "fix": err.fix}],
        "discovered": {},
        "timings": getattr(err, "timings", {}),
        "path": getattr(err, "rows", []),
    }
    (run_dir / "distill.json").write_text(json.dumps(metrics, indent=2, default=float))
    return metrics


def forecast_band(
    interval: LaplaceInterval,
    result: Distillation,
    measurements: Measurements,
    times: np.ndarray,
    states: list[str],
    truth: np.ndarray | None,
) -> tuple[ForecastInterval | None, dict[str, Any]]:
    """The band of the refitted twin's forecast over ``times`` from its fitted initial states,
    and its summary for distill.json: level, draws, failed draws, floored eigenvalues, the
    directions that the parameters' ranges bound rather than the data, the band's mean width
    per state where it is bounded and, with
    ``truth (condition, time, state)`` and a usable band (:attr:`ForecastInterval.usable`),
    the fraction of the true states inside (overall and per state). A band that cannot be
    computed (the solve at the optimum fails) is recorded as an error, not raised."""
    try:
        band = interval.forecast(result.model, measurements, times)
    except (RuntimeError, ValueError, np.linalg.LinAlgError) as err:
        return None, {"error": f"{type(err).__name__}: {err}"}
    out: dict[str, Any] = {
        "level": band.level,
        "method": "laplace",
        "n_samples": band.n_samples,
        "n_failed": band.n_failed,
        "n_floored_eigenvalues": band.laplace.n_floored,
        # directions along which the parameters' ranges (bounds, or a weak log-scale prior),
        # not the data, bound the draws (ude.uq.parameter_ranges)
        "n_prior_bounded": band.laplace.n_prior_bounded,
        # residuals that are not independent: the share of the entries the band counts
        # (ude.distill.residual_dependence)
        "residual_dependence": band.laplace.dependence.as_dict(),
        # noise that differs between conditions: the sandwich's precision where it applied
        # (ude.distill.noise_blocks)
        "noise_blocks": band.laplace.noise_blocks.as_dict(),
    }
    if band.usable:  # failed draws count outside the band: unbounded once too many have
        out["unbounded_from"] = band.unbounded_from()
        out["bounded_share"] = float(np.mean(band.bounded))
        width = np.where(band.bounded[..., None], band.upper - band.lower, np.nan)
        out["mean_width_by_state"] = {
            s: float(np.nanmean(width[..., i])) for i, s in enumerate(states)
        }
    if truth is not None and band.usable:
        out["coverage_of_truth"] = band.coverage(truth)  # where the band is bounded
        inside = (truth >= band.lower) & (truth <= band.upper)
        out["coverage_by_state"] = {
            s: float(np.mean(inside[..., i][band.bounded])) for i, s in enumerate(states)
        }
    return band, out
