"""What a distillation leaves in the run directory: twin.json, equations.md, distill.json,
the comparison and forecast plots; and its errors against a known truth."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import sympy as sp
import torch

from ude.data.measurements import Measurements
from ude.distill.distiller import Distillation
from ude.distill.twin import equations_markdown, twin_to_dict
from ude.distill.uncertainty import ForecastInterval, LaplaceInterval
from ude.model.hybrid import HybridODE
from ude.spec.compile import CompiledExpressions
from ude.spec.model_spec import ModelSpec
from ude.spec.simulate import simulate_spec


def term_coefficients(expr: sp.Expr) -> dict[str, float]:
    """``{basis term: coefficient}`` of an expanded expression, e.g. -0.9*x*y -> {x*y: -0.9}."""
    out: dict[str, float] = {}
    for term in sp.Add.make_args(sp.expand(expr)):
        if term == 0:
            continue
        coeff, basis = term.as_coeff_Mul()
        out[str(basis)] = out.get(str(basis), 0.0) + float(coeff)
    return out


def _numeric(expr: sp.Expr, spec: ModelSpec) -> sp.Expr:
    return expr.xreplace({sp.Symbol(k): p.value for k, p in spec.parameters.items()})


def compare_with_truth(twin: ModelSpec, truth_spec: ModelSpec, missing: dict) -> dict[str, Any]:
    """Structure and coefficient errors of the discovered terms against the true missing
    terms: ``exact`` when every state has exactly the true basis terms."""
    per_state, errors, exact = {}, [], True
    for s, true_expr in missing.items():
        true = term_coefficients(_numeric(true_expr, truth_spec))
        found = term_coefficients(_numeric(twin.discovered.get(s, sp.Integer(0)), twin))
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
    ``horizon`` times the data's span, and the true states when the data are synthetic."""
    t0, t1 = float(measurements.times[0]), float(measurements.times[-1])
    times = np.linspace(t0, t0 + horizon * (t1 - t0), int(200 * horizon) + 1)
    states = simulate_spec(twin, initial, times, measurements.inputs, rtol=1e-8, atol=1e-10)
    truth = None
    if measurements.truth is not None:
        tr = measurements.truth
        truth = simulate_spec(
            tr.spec, tr.initial, times, measurements.inputs, rtol=1e-8, atol=1e-10
        )
        truth = truth[..., [tr.spec.states.index(s) for s in twin.states]]
    return times, states, truth


def forecast_nmse(states: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Per state: mean squared error over the variance of the truth (NaN counts as failure)."""
    out = {}
    for i in range(states.shape[-1]):
        err = states[..., i] - truth[..., i]
        v = float(np.var(truth[..., i]))
        out[str(i)] = float(np.mean(err**2) / v) if np.all(np.isfinite(err)) else float("inf")
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


def write_report(
    result: Distillation,
    trained: HybridODE,
    measurements: Measurements,
    run_dir: str | Path,
    horizon: float = 10.0,
    interval: LaplaceInterval | None = None,
) -> dict[str, Any]:
    """Writes twin.json, twin.sbml, equations.md, distill.json and plots/distilled_terms.png,
    plots/forecast.png into ``run_dir``; returns the metrics. With ``interval``, the forecast
    gets its band (see :func:`forecast_band`)."""
    from ude.distill.plots import plot_distilled_terms, plot_forecast
    from ude.spec.sbml import write_sbml

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    twin = result.twin
    twin_dict = twin_to_dict(twin, measurements.observables, trained.spec, result.inclusion)
    rows = result.path_rows()
    weights = model_weights(rows)
    twin_dict["model_weights"] = weights
    (run_dir / "twin.json").write_text(json.dumps(twin_dict, indent=2))
    ties = result.tie_rows()
    (run_dir / "equations.md").write_text(
        equations_markdown(
            twin,
            trained.spec,
            rows,
            result.inclusion,
            ties=ties,
            identifiability=result.identifiability,
        )
    )
    initial = result.model.initial.detach().cpu().numpy()
    # The twin as SBML, with the first condition's initial states and inputs.
    write_sbml(
        twin,
        run_dir / "twin.sbml",
        initial={s: float(initial[0, i]) for i, s in enumerate(twin.states)},
        inputs={u: float(measurements.inputs[0, j]) for j, u in enumerate(twin.inputs)},
    )
    times, states, truth = forecast(twin, initial, measurements, horizon)
    metrics: dict[str, Any] = {
        "discovered": twin_dict["discovered"],
        "n_terms": result.chosen.candidate.n_terms,
        "trajectory_nmse": result.refit.nmse,
        "criterion": result.chosen.criterion,
        "timings": dict(result.timings),
        "path": rows,
        "model_weights": weights,
        "ties": ties,
        "identifiability": result.identifiability,
    }
    band = None
    if interval is not None:
        start = time.perf_counter()
        band, metrics["forecast_interval"] = forecast_band(
            interval, result, measurements, times, twin.states, truth
        )
        metrics["timings"]["interval_seconds"] = round(time.perf_counter() - start, 3)
    if result.inclusion is not None:
        metrics["inclusion_probability"] = result.inclusion
    if truth is not None:
        nmse = forecast_nmse(states, truth)
        metrics["forecast_horizon"] = float(times[-1])
        metrics["forecast_nmse"] = {s: nmse[str(i)] for i, s in enumerate(twin.states)}
        tr = measurements.truth
        if tr.missing:
            metrics["truth"] = compare_with_truth(twin, tr.spec, tr.missing)
    (run_dir / "distill.json").write_text(json.dumps(metrics, indent=2, default=float))
    plot_distilled_terms(result, run_dir / "plots" / "distilled_terms.png")
    plot_forecast(
        times, states, truth, measurements, twin, run_dir / "plots" / "forecast.png", band
    )
    return metrics


def model_weights(rows: list[dict[str, Any]], floor: float = 1e-4) -> list[dict[str, Any]]:
    """The refitted structures with their evidence weights, heaviest first (those above
    ``floor``): what averaging over the candidates needs."""
    kept = [r for r in rows if r.get("weight", 0.0) > floor]
    return [
        {"discovered": r["terms"], "weight": r["weight"], "criterion": r["criterion"]}
        for r in sorted(kept, key=lambda r: -r["weight"])
    ]


def forecast_band(
    interval: LaplaceInterval,
    result: Distillation,
    measurements: Measurements,
    times: np.ndarray,
    states: list[str],
    truth: np.ndarray | None,
) -> tuple[ForecastInterval | None, dict[str, Any]]:
    """The band of the refitted twin's forecast over ``times`` from its fitted initial states,
    and its summary for distill.json: level, draws, failed draws, floored eigenvalues and, with
    ``truth (condition, time, state)``, the fraction of the true states inside (overall and
    per state). A band that cannot be computed (the solve at the optimum fails) is recorded
    as an error, not raised."""
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
    }
    if truth is not None and band.n_failed < band.n_samples:
        out["coverage_of_truth"] = band.coverage(truth)
        inside = (truth >= band.lower) & (truth <= band.upper)
        out["coverage_by_state"] = {s: float(np.mean(inside[..., i])) for i, s in enumerate(states)}
    return band, out
