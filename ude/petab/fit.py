"""Training a PEtab SciML problem as it stands: maximise its log-likelihood (log-posterior
with priors) over the estimated parameters and the networks' estimated layers, wherever the
networks sit (right-hand side, parameters and initial values, observables).

``python train.py data=petab data.problem=problem.yaml`` comes here for a problem with
networks (:func:`fit_problem`): Adam on the parameters' scales, each step within the table's
bounds, then an optional L-BFGS-B polish within the bounds; the best parameters seen are kept
and written back as a PEtab SciML problem (:func:`write_fitted_problem`) whose likelihood is the
fitted one. ``python -m ude.petab fit`` runs it from several starts (:func:`multistart`).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch

from ude.errors import UdeError
from ude.model.solver import Solver, SolverFailed
from ude.petab.least_squares import has_residuals, least_squares_fit
from ude.petab.objective import PetabModel
from ude.petab.problem import PetabProblem, load_problem


def _bounds(model: PetabModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds of ``theta`` on the parameters' scales."""
    lo, hi = [], []
    for q in model.estimated:
        row = model.problem.parameters[q]
        for bound, out in ((row.lower, lo), (row.upper, hi)):
            if row.scale != "lin" and bound <= 0:
                out.append(-math.inf)
            elif row.scale == "log" and math.isfinite(bound):
                out.append(math.log(bound))
            elif row.scale == "log10" and math.isfinite(bound):
                out.append(math.log10(bound))
            else:
                out.append(bound)
    return (
        torch.tensor(lo, dtype=torch.float64),
        torch.tensor(hi, dtype=torch.float64),
    )


STEP_BACKS = 10
"""How many times Adam steps back (to its best point, at half the step size) from a point where
the model cannot be solved before the start stops there."""


def fit_problem(
    problem: str | Path | PetabProblem,
    solver: Solver,
    epochs: int,
    lr: float,
    polish_steps: int = 0,
    seed: int = 0,
    log=print,
    start: torch.Tensor | None = None,
    log_every: int | None = None,
    least_squares: int = 0,
    shooting: int = 0,
    shooting_evaluations: int = 0,
    windows: int = 0,
) -> tuple[PetabModel, dict]:
    """Fit ``problem``'s estimated parameters and networks (from ``start``, the estimated
    parameters on their scales, default the nominal values); returns the model at the best
    objective seen and metrics (``objective`` first and best, ``history``, ``seconds``).
    ``log`` gets the objective at the start, every ``log_every`` Adam steps (default a tenth
    of them) and during the polish.

    Stages: with ``shooting`` above 1, multiple shooting over that many segments (at most
    ``shooting_evaluations`` evaluations, :mod:`ude.petab.shooting`), whose parameters the
    next stages start from (better or not than the start: a random start is no fit to keep);
    with ``windows`` above 1, least squares on the measurements up to ``j / windows`` of the
    time course for ``j`` from 1 to ``windows - 1`` (``least_squares`` solves each);
    trust-region least squares on all of them (at most ``least_squares`` solves; these three
    only where the objective is a sum of squares, :mod:`ude.petab.least_squares`), then
    Adam, stepping back from points the model cannot be solved at (:data:`STEP_BACKS`), then
    the L-BFGS-B polish.
    Adam's small steps find an optimum's basin where L-BFGS-B's first steps jump out of it
    (Elowitz, from its optimum moved 0.3 decades at random: 6 of 6 starts back at llh -21.96
    to -21.99 with Adam first, 0 of 6 with the polish alone)."""
    torch.manual_seed(seed)
    p = problem if isinstance(problem, PetabProblem) else load_problem(problem)
    model = PetabModel(p, solver=solver)
    if start is not None:
        with torch.no_grad():
            model.theta.copy_(start)
    posterior = p.has_priors
    lo, hi = _bounds(model)
    params = [q for q in model.parameters() if q.requires_grad]

    def objective() -> torch.Tensor:
        value = model.forward()
        return value + model.log_prior() if posterior else value

    def snapshot() -> dict:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    began = time.perf_counter()
    try:
        with torch.no_grad():
            first = float(objective())
    except SolverFailed as err:
        log(f"no solve at the start: {err}")
        return model, {"first": -math.inf, "best": -math.inf, "stop_reason": f"start: {err}"}
    name = "log_posterior" if posterior else "llh"
    log(f"{name} {first:.6g} at the start")
    every = log_every or max(1, epochs // 10)
    best, best_state = first, snapshot()
    shot = None
    squares = has_residuals(model)
    if (shooting > 1 or windows > 1) and not squares:
        log(
            "no multiple shooting or windows: the objective is no sum of squares (it needs "
            "normal noise, no networks, no priors)"
        )
    if shooting > 1 and squares:
        shot = _shoot(p, solver, model, lo, hi, shooting, shooting_evaluations, log)
        best, best_state = shot["llh"], snapshot()
    if least_squares and windows > 1 and squares:
        # a curriculum over the time course: the first part of the data, then more
        t0, t1 = float(model.times[0]), float(model.times[-1])
        for j in range(1, windows):
            until = t0 + (t1 - t0) * j / windows
            least_squares_fit(model, *_bounds(model), least_squares, log, until=until)
    if least_squares and squares:
        found = least_squares_fit(model, *_bounds(model), least_squares, log)
        if found > best:
            best, best_state = found, snapshot()
        model.load_state_dict(best_state)
    history = [first]
    optimizer = torch.optim.Adam(params, lr=lr)
    stop, step_backs = None, 0
    for epoch in range(epochs):
        optimizer.zero_grad(set_to_none=True)
        try:
            value = objective()
            (-value).backward()
        except SolverFailed as err:
            # a step into parameters the model cannot be solved at (a random start's first
            # steps, often): back to the best point, on half the steps, momentum forgotten
            step_backs += 1
            if step_backs > STEP_BACKS:
                stop = f"epoch {epoch}: {err}"
                break
            model.load_state_dict(best_state)
            lr_now = optimizer.param_groups[0]["lr"] / 2
            optimizer = torch.optim.Adam(params, lr=lr_now)
            continue
        v = float(value.detach())
        history.append(v)
        if math.isfinite(v) and v > best:
            best, best_state = v, snapshot()
        optimizer.step()
        with torch.no_grad():
            model.theta.copy_(torch.maximum(torch.minimum(model.theta, hi), lo))
        if (epoch + 1) % every == 0 or epoch == epochs - 1:
            log(f"Adam step {epoch + 1}/{epochs}: {name} {v:.6g} (best {best:.6g})")
    model.load_state_dict(best_state)
    if polish_steps and stop is None:
        best = _polish(model, objective, params, lo, hi, polish_steps, best, log)
    with torch.no_grad():
        final = float(objective())
    metrics = {
        "objective": "log_posterior" if posterior else "llh",
        "first": first,
        "best": final,
        "epochs": len(history) - 1,
        "history": history,
        "seconds": time.perf_counter() - began,
        "compiled_solve": model.compiled is not None,
        "step_backs": step_backs,
    }
    if shot is not None:
        metrics["shooting"] = shot
    if stop:
        metrics["stop_reason"] = stop
    return model, metrics


def _shoot(
    problem: PetabProblem,
    solver: Solver,
    model: PetabModel,
    lo: torch.Tensor,
    hi: torch.Tensor,
    segments: int,
    evaluations: int,
    log,
) -> dict:
    """Multiple shooting from ``model.theta``; ``model.theta`` ends at its result, or stays
    where that cannot be solved in one piece. Returns the stages, the evaluations and the
    single-shooting objective (``llh``) where ``model.theta`` ends."""
    from ude.petab.shooting import ShootingModel, shooting_fit

    start = model.theta.detach().clone()
    shooter = ShootingModel(problem, solver, segments)
    with torch.no_grad():
        shooter.theta.copy_(start)
    began = time.perf_counter()
    try:
        result = shooting_fit(shooter, lo, hi, evaluations, log=log)
        with torch.no_grad():
            model.theta.copy_(shooter.theta)
            llh = float(model.forward())
        if not math.isfinite(llh):
            raise SolverFailed(f"llh {llh} in one piece")
    except SolverFailed as err:
        log(f"multiple shooting: no solve ({err}); going on from the start")
        with torch.no_grad():
            model.theta.copy_(start)
            llh = float(model.forward())
        result = {"stages": [], "evaluations": 0}
    result.update(llh=llh, segments=shooter.segments, seconds=time.perf_counter() - began)
    log(f"multiple shooting: llh {llh:.6g} in one piece ({shooter.segments} segments)")
    return result


def _polish(model, objective, params, lo, hi, steps, best, log) -> float:
    """L-BFGS-B (scipy's) from the best Adam iterate, within the bounds on ``theta`` (the
    networks' weights are free), at most ``steps`` iterations; the best point it evaluates is
    kept where it improves on ``best``. Returns the objective kept.

    Bounds matter here: published optima sit on them (Elowitz has three parameters at their
    lower bound), and an unbounded L-BFGS walks past them, where the objective is better
    still, so that its clamped end point was worse than Adam's and the polish was dropped.
    """
    import numpy as np
    from scipy.optimize import minimize

    sizes = [q.numel() for q in params]
    bounds = []
    for q in params:
        if q is model.theta:
            bounds += [
                (float(a) if math.isfinite(a) else None, float(b) if math.isfinite(b) else None)
                for a, b in zip(lo.tolist(), hi.tolist(), strict=True)
            ]
        else:
            bounds += [(None, None)] * q.numel()
    x0 = torch.cat([q.detach().flatten() for q in params]).double().numpy()
    found = {"value": best, "x": None, "evaluations": 0}
    # Where the model cannot be solved, a value far worse than the start's (finite: an
    # infinite one ends scipy's line search, and with it the polish, at its first failed
    # trial step; a finite one makes it step back)
    failed = 10.0 * abs(best) + 1e10 if math.isfinite(best) else 1e300

    def load(x: np.ndarray) -> None:
        with torch.no_grad():
            for q, chunk in zip(params, np.split(x, np.cumsum(sizes)[:-1]), strict=True):
                q.copy_(torch.as_tensor(chunk, dtype=q.dtype).reshape(q.shape))

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        load(x)
        for q in params:
            q.grad = None
        found["evaluations"] += 1
        try:
            value = objective()
            (-value).backward()
        except SolverFailed:  # a step too far: the line search backs off
            return failed, np.zeros_like(x)
        v = float(value.detach())
        if not math.isfinite(v):  # as a failed solve: L-BFGS-B takes no NaN
            return failed, np.zeros_like(x)
        if v > found["value"]:
            found["value"], found["x"] = v, x.copy()
        if found["evaluations"] % 50 == 0:  # a line now and then: a log, not a trace
            log(f"L-BFGS-B evaluation {found['evaluations']}: best {found['value']:.6g}")
        # the gradient of -value, the function minimised: backward() ran on it
        grad = torch.cat(
            [(q.grad if q.grad is not None else torch.zeros_like(q)).flatten() for q in params]
        )
        return -v, grad.double().numpy()

    result = minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": steps, "maxfun": int(1.25 * steps) + 1},
    )
    load(x0 if found["x"] is None else found["x"])
    log(
        f"L-BFGS-B polish: best {max(found['value'], best):.6g} after {found['evaluations']} "
        f"evaluations ({result.message})"
    )
    if found["x"] is None:
        return best
    return found["value"]


REDRAWS = 10
"""How many other points a random start draws when the model cannot be solved at its own."""


def latin_hypercube(
    lo: torch.Tensor, hi: torch.Tensor, n: int, generator: torch.Generator
) -> torch.Tensor:
    """``n`` points ``(n, parameter)`` within ``[lo, hi]`` (the bounds on each parameter's
    scale): each parameter's range cut into ``n`` equal strata with one point, uniform, in
    each, the strata paired at random across parameters. Unlike independent uniform draws, no
    region of any one parameter's range is left out."""
    u = torch.rand(n, len(lo), generator=generator, dtype=lo.dtype)
    strata = torch.stack([torch.randperm(n, generator=generator) for _ in lo], dim=1)
    return lo + (hi - lo) * (strata.to(lo.dtype) + u) / n


def screen(problem: PetabProblem, solver: Solver, points: torch.Tensor) -> torch.Tensor:
    """The objective (log-likelihood, log-posterior with priors) at each of ``points
    (point, parameter)``, ``(point,)``: one solve each, no gradient; -inf where the model
    cannot be solved."""
    model = PetabModel(problem, solver=solver)
    out = torch.full((len(points),), -math.inf, dtype=torch.float64)
    for i, x in enumerate(points):
        with torch.no_grad():
            model.theta.copy_(x)
            try:
                value = model.forward()
                if problem.has_priors:
                    value = value + model.log_prior()
            except SolverFailed:
                continue
        if math.isfinite(float(value)):
            out[i] = float(value)
    return out


def multistart(
    problem: str | Path,
    out_dir: str | Path,
    solver: Solver,
    starts: int,
    epochs: int,
    lr: float,
    polish_steps: int,
    seed: int = 0,
    nominal: bool = True,
    log=print,
    screen_points: int = 0,
    least_squares: int = 0,
    shooting: int = 0,
    shooting_evaluations: int = 0,
    windows: int = 0,
) -> dict:
    """:func:`fit_problem` from the nominal values (``nominal``) and from ``starts`` points
    within the bounds on each parameter's scale; the best fit is written to ``out_dir`` (a
    PEtab problem and ``fit.json`` with every start's result and their spread).

    The starts are ``starts`` Latin-hypercube points or, with ``screen_points`` above
    ``starts``, the best ``starts`` of that many, each evaluated once (:func:`screen`). A
    screen finds the basin of a global optimum that fits the data where other optima do not
    (an oscillator's frequency); it does not where a poor fit is the easy one to be near
    (Elowitz: the best 10 of 500 points are all near its flat fit, llh -92, and 9 of them end
    there). Each start fits by multiple shooting over ``shooting`` segments (at most
    ``shooting_evaluations`` evaluations; none with ``shooting`` 0), least squares over a
    growing time window (``windows`` stages; none with 0) and on all the data (at most
    ``least_squares`` solves each; all three where the objective is a sum of squares), Adam
    and L-BFGS-B (:func:`fit_problem`). A point where
    the model cannot be solved is never chosen; a start that still cannot be solved draws
    another point (at most :data:`REDRAWS` times). ``log`` gets the screen's result, each
    start's progress, a few lines per start, each naming it (``start 2/4 (random 1): ...``):
    its objective at the start, every quarter of its Adam steps, every 50 evaluations of the
    polish, and its result; then the spread of the starts' results."""
    p = load_problem(problem)
    lo, hi = _bounds(PetabModel(p, solver=solver))
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()) and starts:
        raise UdeError(
            "random starts need finite bounds on every estimated parameter",
            source=str(problem),
            fix="give lowerBound and upperBound, or --starts 0",
        )
    generator = torch.Generator().manual_seed(seed)
    n_screen = screen_points
    chosen: list[torch.Tensor] = []
    screened: dict = {}
    if starts and n_screen > starts:
        began = time.perf_counter()
        candidates = latin_hypercube(lo, hi, n_screen, generator)
        values = screen(p, solver, candidates)
        order = torch.argsort(values, descending=True, stable=True)
        solvable = int(torch.isfinite(values).sum())
        chosen = [candidates[i] for i in order[: min(starts, max(solvable, 1))]]
        kept = values[order[: len(chosen)]]
        screened = {
            "points": n_screen,
            "solvable": solvable,
            "kept": [float(v) for v in kept],
            "seconds": time.perf_counter() - began,
        }
        log(
            f"screen: {n_screen} Latin-hypercube points, {solvable} solvable, in "
            f"{screened['seconds']:.0f} s; starts from the best {len(chosen)} "
            f"(objective {float(kept[0]):.6g} to {float(kept[-1]):.6g})"
        )
    elif starts:
        chosen = list(latin_hypercube(lo, hi, starts, generator))
    points = [None] * int(nominal) + chosen
    results, best_model, best = [], None, -math.inf
    for i, point in enumerate(points):
        name = "nominal" if point is None else f"random {i + 1 - int(nominal)}"
        tag = f"start {i + 1}/{len(points)} ({name})"
        for attempt in range(REDRAWS + 1):
            model, metrics = fit_problem(
                load_problem(problem),
                solver,
                epochs,
                lr,
                polish_steps,
                seed,
                lambda line, tag=tag: log(f"{tag}: {line}"),
                point,
                log_every=max(1, epochs // 4),
                least_squares=least_squares,
                shooting=shooting,
                shooting_evaluations=shooting_evaluations,
                windows=windows,
            )
            if point is None or math.isfinite(metrics["first"]) or attempt == REDRAWS:
                break
            # a point where the model cannot be solved (it blows up at t=0) is no start: draw
            # another, after every start's own point, so the other starts stay as they were
            log(f"{tag}: drawing another point ({attempt + 1}/{REDRAWS})")
            point = lo + (hi - lo) * torch.rand(len(lo), generator=generator, dtype=lo.dtype)
        log(
            f"{tag}: {metrics.get('objective', 'objective')} {metrics['first']:.6g} -> "
            f"{metrics['best']:.6g} in {metrics.get('seconds', 0.0):.0f} s"
            + (f" ({metrics['stop_reason']})" if "stop_reason" in metrics else "")
        )
        metrics.pop("history", None)
        results.append({"start": name, **metrics})
        if metrics["best"] > best:
            best, best_model = metrics["best"], model
    if best_model is None:
        raise UdeError("no start could be solved", source=str(problem))
    out = Path(out_dir)
    path = write_fitted_problem(best_model, out)
    fitted = best_model.parameter_values().detach()
    summary = {
        "best": best,
        "parameters": {q: float(fitted[best_model.scalars.index(q)]) for q in best_model.estimated},
        "spread": spread([r["best"] for r in results]),
        "screen": screened,
        "starts": results,
        "problem": str(path),
    }
    (out / "fit.json").write_text(json.dumps(summary, indent=2))
    s = summary["spread"]
    log(
        f"starts: {s['within_1']} of {s['starts']} within 1 of the best; their results: "
        + ", ".join(f"{v:.6g}" for v in s["results"])
    )
    log(f"best objective {best:.6g}; fitted problem: {path}")
    return summary


def spread(results: list[float]) -> dict:
    """How the starts ended: their results ``(start,)`` best first, and how many came within
    1 (log-likelihood unit) of the best: a fit where one start alone reaches its best may not
    have found the optimum."""
    ordered = sorted(results, key=lambda v: -v if math.isfinite(v) else math.inf)
    top = ordered[0] if ordered else -math.inf
    return {
        "starts": len(ordered),
        "within_1": sum(1 for v in ordered if math.isfinite(v) and v >= top - 1.0),
        "results": ordered,
    }


def write_fitted_problem(model: PetabModel, out_dir: str | Path) -> Path:
    """The problem with its fitted values as a PEtab problem in ``out_dir``: the parameter
    table's nominal values set to the fit, the networks' parameters (and the problem's input
    arrays) in one array file; the other files copied. Returns the new problem's YAML."""
    import pandas as pd
    import petab

    from ude.petab.sciml import network_arrays, write_arrays

    p = model.problem
    src = Path(p.source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = petab.yaml.load_yaml(src)
    for path in src.parent.rglob("*"):
        if path.is_file() and path != src:
            dest = out / path.relative_to(src.parent)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
    fitted = model.parameter_values().detach()
    values = {q: float(fitted[model.scalars.index(q)]) for q in model.estimated}
    for path in p.files["parameter"]:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        for i, pid in enumerate(table["parameterId"]):
            if pid in values:
                table.loc[i, "nominalValue"] = repr(values[pid])
        table.to_csv(out / path.relative_to(src.parent), sep="\t", index=False)
    if p.networks:
        arrays = {net_id: network_arrays(use.net) for net_id, use in p.networks.items()}
        write_arrays(out / "fitted_arrays.hdf5", arrays, p.input_arrays)
        sciml = (raw.get("extensions") or {}).get("sciml")
        sciml["array_files"] = ["fitted_arrays.hdf5"]
    path = out / src.name
    petab.yaml.write_yaml(raw, path)
    return path


def train_problem(
    problem: str | Path,
    run_dir: str | Path,
    solver: Solver,
    epochs: int,
    lr: float,
    polish_steps: int = 0,
    seed: int = 0,
    log=print,
) -> dict:
    """:func:`fit_problem`, then the run directory: ``metrics.json`` and ``petab/`` (the
    fitted problem); returns the metrics."""
    run_dir = Path(run_dir)
    model, metrics = fit_problem(problem, solver, epochs, lr, polish_steps, seed, log)
    metrics["petab"] = str(write_fitted_problem(model, run_dir / "petab"))
    metrics["run_dir"] = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log(
        f"ude: {problem} fitted for {metrics['epochs']} epochs in {metrics['seconds']:.1f} s; "
        f"{metrics['objective']} {metrics['first']:.6g} -> {metrics['best']:.6g}"
    )
    return metrics


def has_networks(problem: str | Path) -> bool:
    """Whether a PEtab problem's YAML declares PEtab SciML networks."""
    import yaml

    try:
        raw = yaml.safe_load(Path(problem).read_text())
    except (OSError, yaml.YAMLError):
        return False
    sciml = ((raw or {}).get("extensions") or {}).get("sciml") or {}
    return bool(sciml.get("neural_networks"))
