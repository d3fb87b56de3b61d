"""Methods behind one interface: ``method.fit(problem) -> MethodResult``.

A method sees the scenario's measurements (and, if it uses prior knowledge, the known spec) and
returns a ModelSpec of the equations it found (None when it only forecasts), its forecast of the
benchmark's forecast task, optionally a 95 % forecast band, and its wall time.

Baselines get one fixed hyperparameter rule for every system and scenario (nobody is tuned on
the truth): library columns and derivative targets are scaled to unit RMS, and STLSQ keeps a term
when its scaled coefficient is at least ``threshold`` = 0.1 (pysindy's default value: a term
that explains under 10 % of a derivative's RMS is dropped), ridge ``alpha`` = 1e-3. The option
``threshold='bic'`` (choose from a path by the regression's BIC) exists but is not the default:
on noise-free Lotka-Volterra data it kept spurious terms that 0.1 drops.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy as sp
import torch

from ude.benchmark.libraries import make_library
from ude.benchmark.scenario import Problem
from ude.spec.model_spec import ModelSpec, NeuralSlot
from ude.spec.simulate import simulate_spec


@dataclass
class MethodResult:
    """What a method returns for one problem.

    ``spec``: the discovered model (None: forecast only); ``forecast (time, state)`` over
    ``forecast_states`` (None: the forecast failed); ``lower``/``upper``: a 95 % band like
    ``forecast`` or None; ``seconds``: wall time of the fit; ``info``: method-specific extras;
    ``other_forecasts``: forecasts of intermediate models (e.g. the UDE before distillation),
    scored alongside.
    """

    spec: ModelSpec | None
    forecast_states: list[str]
    forecast: np.ndarray | None
    seconds: float
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    other_forecasts: dict[str, np.ndarray | None] = field(default_factory=dict)


class Method:
    """Base class: ``fit(problem)`` returns a :class:`MethodResult`."""

    name = "method"
    uses_prior = False

    def fit(self, problem: Problem) -> MethodResult:
        raise NotImplementedError


# -- shared pieces ------------------------------------------------------------------------------
def integrate(
    spec: ModelSpec, problem: Problem, initial: np.ndarray, max_calls: int = 20_000
) -> np.ndarray | None:
    """States ``(time, state)`` of a symbolic ``spec`` on ``problem``'s forecast times from
    ``initial (state,)`` with condition 0's inputs (:func:`ude.spec.simulate_spec`); None when
    the solve fails, needs more than ``max_calls`` right-hand-side calls (a stiff or chaotic
    candidate: a failure, not minutes of solving) or leaves 1e6 times the initial scale."""
    inputs = problem.measurements.inputs
    u = inputs[:1, [problem.measurements.input_names.index(n) for n in spec.inputs]]
    states = simulate_spec(
        spec, initial[None], problem.forecast_times, u, rtol=1e-6, atol=1e-9, max_calls=max_calls
    )[0]
    return states if np.all(np.isfinite(states)) else None


def averaged(problem: Problem) -> np.ndarray:
    """Replicate-averaged data ``(condition, time, observed)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(problem.measurements.values, axis=2)


THRESHOLDS = tuple(np.round(np.logspace(-2, 0, 11), 4))
"""The threshold path the ``bic`` rule chooses from (scaled units)."""


def _bic(A: np.ndarray, B: np.ndarray, coef: np.ndarray) -> float:
    """Sum over targets of ``n log(RSS/n) + k log n`` of a scaled regression."""
    n = A.shape[0]
    rss = np.sum((A @ coef.T - B) ** 2, axis=0)
    k = np.count_nonzero(coef, axis=1)
    return float(np.sum(n * np.log(np.maximum(rss, 1e-300) / n) + k * np.log(n)))


def stlsq_scaled(
    Theta: np.ndarray,
    Y: np.ndarray,
    threshold: float | str,
    alpha: float,
    ensemble: int = 0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """STLSQ (pysindy) on unit-RMS columns and targets: coefficients ``(target, term)`` in the
    original units, the bagged models ``(model, target, term)`` when ``ensemble`` > 0, and the
    threshold used. ``threshold='bic'`` takes the one of :data:`THRESHOLDS` with the smallest
    BIC of the regression (data only, never the truth)."""
    import pysindy as ps

    col = np.sqrt(np.mean(Theta**2, axis=0))
    col = np.where(col > 0, col, 1.0)
    ys = np.sqrt(np.mean(Y**2, axis=0))
    ys = np.where(ys > 0, ys, 1.0)
    A, B = Theta / col, Y / ys
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if threshold == "bic":
            scored = []
            for thr in THRESHOLDS:
                c = ps.STLSQ(threshold=thr, alpha=alpha).fit(A, B).coef_
                scored.append((_bic(A, B, np.asarray(c)), thr))
            threshold = min(scored)[1]
        opt = ps.STLSQ(threshold=float(threshold), alpha=alpha)
        if ensemble:
            # pysindy 2.x's bagging draws from numpy's global stream: seed it, then restore it
            saved = np.random.get_state()
            np.random.seed(seed)
            try:
                ens = ps.EnsembleOptimizer(opt, bagging=True, n_models=ensemble).fit(A, B)
            finally:
                np.random.set_state(saved)
            models = np.array(ens.coef_list) * ys[None, :, None] / col[None, None, :]
            coef = np.asarray(ens.coef_) * ys[:, None] / col[None, :]
            return coef, models, float(threshold)
        opt.fit(A, B)
    return np.asarray(opt.coef_) * ys[:, None] / col[None, :], None, float(threshold)


def spec_from_coef(states: list[str], terms: list[sp.Expr], coef: np.ndarray) -> ModelSpec:
    """A symbolic spec with ``d state_i/dt = sum_j coef[i, j] * terms[j]``."""
    eqs = {}
    for i, s in enumerate(states):
        e = sp.Integer(0)
        for j in np.flatnonzero(coef[i]):
            e = e + sp.Float(float(coef[i, j]), 8) * terms[j]
        eqs[s] = e
    return ModelSpec(states=list(states), equations=eqs, name="sindy")


class _SparseBaseline(Method):
    """Shared by the SINDy family: library over the observed species, scaled STLSQ."""

    def __init__(self, threshold: float | str = 0.1, alpha: float = 1e-3):
        self.threshold = threshold
        self.alpha = alpha

    def regression(self, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def library(self, problem: Problem):
        lib = make_library(problem.library).fit(problem.observed)
        return lib, [t.numeric() for t in lib.terms_]

    def forecast(self, spec: ModelSpec, problem: Problem) -> np.ndarray | None:
        idx = [problem.truth.states.index(s) for s in spec.states]
        return integrate(spec, problem, problem.forecast_initial[idx])

    def fit(self, problem: Problem) -> MethodResult:
        start = time.perf_counter()
        Theta, Y = self.regression(problem)
        _, terms = self.library(problem)
        coef, _, thr = stlsq_scaled(Theta, Y, self.threshold, self.alpha)
        spec = spec_from_coef(problem.observed, terms, coef)
        seconds = time.perf_counter() - start
        forecast = self.forecast(spec, problem)
        return MethodResult(spec, problem.observed, forecast, seconds, info={"threshold": thr})


class SINDy(_SparseBaseline):
    """SINDy: STLSQ on derivatives by smoothed finite differences (pysindy's Savitzky-Golay
    smoother, window 7 or the series length if shorter), replicates averaged, conditions
    stacked."""

    name = "sindy"

    def regression(self, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
        import pysindy as ps

        data = averaged(problem)
        t = problem.measurements.times
        window = min(7, len(t) - (1 - len(t) % 2))
        fd = ps.SmoothedFiniteDifference(smoother_kws={"window_length": window, "polyorder": 3})
        lib, _ = self.library(problem)
        X = np.concatenate(list(data))
        dX = np.concatenate([fd(x, t) for x in data])
        return lib.transform(X), dX


class WeakSINDy(_SparseBaseline):
    """Weak SINDy: the regression in integral form over test functions, no derivatives.

    Test functions ``phi(t) = ((t - a)(b - t))**2`` on ``2 * time points`` windows per condition
    of width max(25 % of the span, 6 sampling steps); integrals by the trapezoid rule on the
    sampling grid; ``-int phi' x dt = int phi Theta(x) dt xi`` solved by the same scaled STLSQ.
    """

    name = "weak_sindy"

    def regression(self, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
        data = averaged(problem)
        t = problem.measurements.times
        lib, _ = self.library(problem)
        span = t[-1] - t[0]
        width = max(0.25 * span, 6 * float(np.median(np.diff(t))))
        width = min(width, span)
        centers = np.linspace(t[0] + width / 2, t[-1] - width / 2, 2 * len(t))
        rows_G, rows_b = [], []
        for x in data:
            theta = lib.transform(x)
            for c in centers:
                a, b = c - width / 2, c + width / 2
                phi = np.clip((t - a) * (b - t), 0, None) ** 2
                dphi = np.where((t > a) & (t < b), 2 * (t - a) * (b - t) * (a + b - 2 * t), 0.0)
                norm = (width / 2) ** 4
                rows_G.append(np.trapezoid(phi[:, None] * theta, t, axis=0) / norm)
                rows_b.append(-np.trapezoid(dphi[:, None] * x, t, axis=0) / norm)
        return np.array(rows_G), np.array(rows_b)


class ESINDy(SINDy):
    """E-SINDy: bagged STLSQ (pysindy's EnsembleOptimizer, ``n_models`` bootstraps of the
    rows) on the SINDy problem; the median model is reported, inclusion probabilities are the
    fraction of models keeping a term, and the 95 % forecast band is the 2.5-97.5 percentile of
    the members' forecasts."""

    name = "esindy"

    def __init__(self, threshold: float | str = 0.1, alpha: float = 1e-3, n_models: int = 20):
        super().__init__(threshold, alpha)
        self.n_models = n_models

    def fit(self, problem: Problem) -> MethodResult:
        start = time.perf_counter()
        Theta, Y = self.regression(problem)
        _, terms = self.library(problem)
        coef, models, thr = stlsq_scaled(
            Theta, Y, self.threshold, self.alpha, self.n_models, problem.scenario.seed
        )
        spec = spec_from_coef(problem.observed, terms, coef)
        forecast = self.forecast(spec, problem)
        runs = [self.forecast(spec_from_coef(problem.observed, terms, m), problem) for m in models]
        ok = [r for r in runs if r is not None]
        lower = upper = None
        if len(ok) >= len(runs) / 2:
            lower, upper = np.percentile(np.array(ok), [2.5, 97.5], axis=0)
        inclusion = np.mean(models != 0, axis=0)
        info = {
            "inclusion": {
                # every library term, those no model kept at 0 (the Brier score counts them)
                s: {str(terms[j]): round(float(inclusion[i, j]), 3) for j in range(len(terms))}
                for i, s in enumerate(problem.observed)
            },
            "members_solved": len(ok),
            "threshold": thr,
        }
        seconds = time.perf_counter() - start
        return MethodResult(spec, problem.observed, forecast, seconds, lower, upper, info)


class BayesianSparse(_SparseBaseline):
    """Bayesian sparse regression (:class:`ude.uq.HorseshoeRegression`): a horseshoe with a
    Gaussian slab on the same library as the SINDy family, the likelihood on the integral
    form of the data (``x(t) = x(t0) + ∫ Θ(x) w``: the library on the replicate-averaged
    data, integrated by the trapezoid rule, an intercept per condition), the exact Gibbs
    sampler with the settings of ``ude``'s own horseshoe (``distill.uq``). Reported: the median
    coefficients of the terms with inclusion probability at least 0.5 (the median
    probability model), the 95 % credible interval and inclusion probability of every term,
    and the 2.5-97.5 percentile band of ``n_band`` posterior draws' forecasts."""

    name = "bayes"

    def __init__(self, n_band: int = 40, seed: int = 0, **settings: Any):
        super().__init__()
        self.n_band = n_band
        self.seed = seed
        self.settings = {"num_samples": 1000, "warmup": 1000, "chains": 4, "thin": 10}
        self.settings.update(settings)

    def problems(self, problem: Problem) -> tuple[list, list[sp.Expr]]:
        from ude.distill.integral import IntegralProblem

        data = averaged(problem)  # (condition, time, observed)
        t = problem.measurements.times
        lib, terms = self.library(problem)
        out = []
        for i in range(len(problem.observed)):
            F, y, cond = [], [], []
            for c, x in enumerate(data):
                ok = np.isfinite(x).all(axis=1)
                theta = lib.transform(x[ok])
                tt = t[ok]
                steps = np.diff(tt)[:, None] * (theta[1:] + theta[:-1]) / 2
                F.append(np.concatenate([np.zeros((1, theta.shape[1])), np.cumsum(steps, 0)]))
                y.append(x[ok, i])
                cond.append(np.full(ok.sum(), c))
            names = [str(term) for term in terms]
            out.append(
                IntegralProblem(
                    np.concatenate(F), np.concatenate(y), np.concatenate(cond), names, True
                )
            )
        return out, terms

    def fit(self, problem: Problem) -> MethodResult:
        from ude.uq import HorseshoeRegression

        start = time.perf_counter()
        seed = problem.scenario.seed + self.seed
        regression = HorseshoeRegression(seed=seed, **self.settings)
        systems, terms = self.problems(problem)
        posts = [regression.fit(p, s) for p, s in zip(systems, problem.observed, strict=True)]
        n_terms = len(terms)
        coef = np.zeros((len(posts), n_terms))
        draws = []
        intervals, inclusion, diagnostics = {}, {}, {}
        for i, (post, state) in enumerate(zip(posts, problem.observed, strict=True)):
            index = [systems[i].terms.index(t) for t in post.terms]
            incl, ci, med = post.inclusion(), post.intervals(), post.medians()
            for j, t in zip(index, post.terms, strict=True):
                if incl[t] >= 0.5:
                    coef[i, j] = med[t]
            flat = post.draws.reshape(-1, len(post.terms))
            full = np.zeros((len(flat), n_terms))
            full[:, index] = flat
            draws.append(full)
            intervals[state] = ci
            inclusion[state] = {t: round(p, 3) for t, p in incl.items()}
            diagnostics[state] = {"max_rhat": post.max_rhat, "min_ess": post.min_ess}
        spec = spec_from_coef(problem.observed, terms, coef)
        forecast = self.forecast(spec, problem)
        rng = np.random.default_rng(seed)
        n_draws = min(len(d) for d in draws)
        picks = rng.choice(n_draws, size=min(self.n_band, n_draws), replace=False)
        runs = [
            self.forecast(
                spec_from_coef(problem.observed, terms, np.stack([d[k] for d in draws])), problem
            )
            for k in picks
        ]
        ok = [r for r in runs if r is not None]
        lower = upper = None
        if len(ok) >= len(runs) / 2:
            lower, upper = np.percentile(np.array(ok), [2.5, 97.5], axis=0)
        info = {
            "inclusion": inclusion,
            "intervals": intervals,
            "convergence": diagnostics,
            "members_solved": len(ok),
        }
        seconds = time.perf_counter() - start
        return MethodResult(spec, problem.observed, forecast, seconds, lower, upper, info)


class NeuralODE(Method):
    """A black-box neural ODE: one network for every state's whole right-hand side, trained
    exactly as ``ude`` trains (:func:`train_as_train_py`: ``python train.py``'s training
    schedule, network and optimiser settings, with dopri5, since a black box has no known
    stiff rates); as many states as the system has (the unobserved ones latent). Forecasts
    only.

    ``overrides``: train.py overrides (the same for ``ude``: one training for both).
    """

    name = "node"

    def __init__(self, overrides: Sequence[str] = ()):
        self.overrides = list(overrides)

    def fit(self, problem: Problem) -> MethodResult:
        states = list(problem.truth.states)
        spec = ModelSpec(
            states=states,
            neural=[NeuralSlot("net", tuple(states), tuple(states))],
            name="neural_ode",
        )
        start = time.perf_counter()
        cfg = composed_config(problem, self.overrides, solver="dopri5")
        model, metrics = train_as_train_py(cfg, spec, problem.measurements)
        seconds = time.perf_counter() - start
        forecast = hybrid_forecast(model, problem)
        return MethodResult(
            None, states, forecast, seconds, info={"train_nmse": metrics.get("train_nmse")}
        )


def composed_config(problem: Problem, overrides: Sequence[str], solver: str | None = None):
    """``python train.py``'s config for ``problem``: the seed of its scenario, the solver its
    modeller would choose (``problem.solver``, or ``solver``), ``overrides`` last; nothing
    logged or written."""
    from omegaconf import open_dict

    from ude.runs import train_config

    cfg = train_config(
        [
            f"seed={problem.scenario.seed}",
            f"solver={solver or problem.solver}",
            "logger=none",
            "callbacks.progress.every=0",
            *overrides,
        ]
    )
    with open_dict(cfg):
        # what only writes files: the checkpoint callback and the run directory
        cfg.callbacks.pop("checkpoint", None)
        cfg.trainer.default_root_dir = None
    return cfg


def ude_config(problem: Problem, overrides: Sequence[str] = ()):
    """The config `ude` runs a cell with: :func:`composed_config`, and the cell's library axis
    as ``distill.library`` (:func:`ude.benchmark.libraries.distill_library`; the base
    scenario's ``default`` leaves the product's)."""
    from ude.benchmark.libraries import distill_library

    cfg = composed_config(problem, overrides)
    library = distill_library(problem.library)
    if library is not None:
        cfg.distill.library = library
    return cfg


def train_as_train_py(cfg, spec: ModelSpec, data) -> tuple[Any, dict[str, Any]]:
    """Train ``spec`` on ``data`` as ``python train.py`` does with config ``cfg`` (its model,
    solver, optimiser, trainer and callbacks): the trained HybridODE and the run's metrics."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from ude.data.datamodule import ConditionsDataModule
    from ude.fit import run_training
    from ude.runs import build_model, data_config

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model, module = build_model(cfg, spec, data)
    options = {k: v for k, v in data_config(cfg).items() if k not in {"_target_", "measurements"}}
    datamodule = ConditionsDataModule(data, **options)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    # nothing written: without a checkpoint callback Lightning would add its own, which
    # writes into the folder the benchmark runs in
    trainer = instantiate(cfg.trainer, _partial_=True)(
        callbacks=callbacks, logger=False, enable_checkpointing=False
    )
    metrics = run_training(module, datamodule, trainer)
    return model, metrics


@torch.no_grad()
def hybrid_forecast(model, problem: Problem) -> np.ndarray | None:
    """A trained HybridODE's states ``(time, state)`` on the forecast task (condition 0's
    inputs and parameters); None when the solver fails."""
    from ude.model.solver import SolverFailed

    dtype = model.initial.dtype
    idx = [problem.truth.states.index(s) for s in model.spec.states]
    y0 = torch.tensor(problem.forecast_initial[idx], dtype=dtype)[None]
    t = torch.tensor(problem.forecast_times, dtype=dtype)
    try:
        out = model.simulate(t, torch.tensor([0]), y0=y0)[0].cpu().numpy()
    except SolverFailed:
        return None
    return out if np.all(np.isfinite(out)) else None


class UDE(Method):
    """``ude`` exactly as ``python train.py`` runs it: the config composed from ``conf/``
    (training schedule, network, optimiser, distillation and its forecast band), the
    scenario's prior knowledge as the spec, its data, and the system's solver. The reported
    model is the distilled twin (known + discovered terms).

    The library axis sets ``distill.library`` (:func:`ude.benchmark.libraries.distill_library`;
    the base scenario's ``default`` leaves it as a user gets it). ``overrides`` are more
    train.py overrides (none by default: the benchmark measures the product's defaults).

    The 95 % forecast band is that of the twin's trajectory from the Laplace approximation at
    the final refit (:class:`ude.distill.uncertainty.LaplaceInterval`, train.py's
    ``distill.forecast_interval``), from the forecast task's initial state; as for E-SINDy,
    there is no band when fewer than half the draws solve. Its time counts in ``seconds``.
    """

    name = "ude"
    uses_prior = True

    def __init__(self, overrides: Sequence[str] = ()):
        self.overrides = list(overrides)

    def fit(self, problem: Problem) -> MethodResult:
        from ude.distill.cli import make_distiller

        data = problem.measurements
        start = time.perf_counter()
        cfg = ude_config(problem, self.overrides)
        model, metrics = train_as_train_py(cfg, problem.known, data)
        train_seconds = time.perf_counter() - start
        info: dict[str, Any] = {
            "train_seconds": round(train_seconds, 2),
            "train_nmse": metrics.get("train_nmse"),
            "solver": problem.solver,
            "epochs": metrics.get("epochs"),
        }
        for key in (
            "warm_start_cycles",
            "warm_start_discarded",
            "warm_start_damping",
            "fit_cycles",
            "rescue_segments",
            "step_backs",
            "ended_on_best",
        ):
            if metrics.get(key):
                info[key] = metrics[key]
        if metrics.get("stop_reason"):
            info["stop_reason"] = metrics["stop_reason"]
        try:
            distilled = make_distiller(cfg.distill).fit(model, data)
        except Exception as err:  # noqa: BLE001 - a failed distillation is a result, not a crash
            # no twin: no equations and no twin forecast (the cell scores as a failure); the
            # trained hybrid's forecast is still scored, as such
            info["distill_error"] = f"{type(err).__name__}: {err}"
            seconds = time.perf_counter() - start
            return MethodResult(
                None,
                list(model.spec.states),
                None,
                seconds,
                info=info,
                other_forecasts={"hybrid": hybrid_forecast(model, problem)},
            )
        twin = distilled.twin
        info["distill_seconds"] = round(time.perf_counter() - start - train_seconds, 2)
        info["distill_timings"] = dict(distilled.timings)  # where the distillation's time went
        # the selection's work behind its time: the candidates it scored, by the step that
        # proposed them, and their refits' L-BFGS iterations
        info["selection"] = {
            "scored": dict(Counter(s.step for s in distilled.path)),
            "iterations": sum(s.refit.iterations for s in distilled.path),
        }
        info["discovered"] = {k: str(v) for k, v in twin.discovered.items()}
        info["ties"] = distilled.tie_rows()
        info["identifiability"] = distilled.identifiability
        info["screened_on"] = distilled.screened_on
        info["screen_misfit"] = distilled.misfit
        if distilled.oracle is not None:
            info["oracle"] = distilled.oracle
        idx = [problem.truth.states.index(s) for s in twin.states]
        initial = problem.forecast_initial[idx]
        band_options = cfg.distill.get("forecast_interval")
        lower, upper = self.band(distilled.model, problem, initial, info, band_options)
        averaged_band = self.uncertainty(cfg, distilled, problem, initial, info)
        if averaged_band is not None:
            lower, upper = averaged_band
        seconds = time.perf_counter() - start
        forecast = integrate(twin, problem, initial)
        hybrid = {"hybrid": hybrid_forecast(model, problem)}
        return MethodResult(
            twin, list(twin.states), forecast, seconds, lower, upper, info, other_forecasts=hybrid
        )

    def uncertainty(
        self, cfg: Any, distilled: Any, problem: Problem, initial: np.ndarray, info: dict
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """``distill.uq`` (:mod:`ude.uq`) on the cell: the coefficient intervals averaged over
        the structures (``info["intervals"]``; the twin's own, given its structure:
        ``info["intervals_chosen"]``) and the structure-averaged band (state band, from
        ``initial``) as the lower and upper ``(time, state)`` returned; None without it.
        ``info["inclusion"]`` stays the distillation's inclusion probabilities, the ones the
        product reports to its user (distill.json's ``inclusion_probability``, equations.md:
        the structure bootstrap's when it ran); the horseshoe's, which distill.json reports
        in its ``uq`` section, go beside them (``info["inclusion_horseshoe"]``)."""
        from ude.distill.cli import make_mixture, make_regression
        from ude.uq import bayesian_terms
        from ude.uq.intervals import averaged_intervals, coefficient_intervals

        data = problem.measurements
        if distilled.inclusion is not None:
            info["inclusion"] = by_state(distilled.inclusion, distilled.routes)
        regression, mixture = make_regression(cfg.distill), make_mixture(cfg.distill)
        start = time.perf_counter()
        if regression is not None:
            section, posts = bayesian_terms(distilled.integral, regression)
            horseshoe = {t: p.inclusion() for t, p in posts.items()}
            info["inclusion_horseshoe"] = by_state(horseshoe, distilled.routes)
            info["convergence"] = {
                t: {"max_rhat": e["max_rhat"], "min_ess": e["min_ess"]}
                for t, e in section["targets"].items()
            }
        if mixture is None:
            return None
        # the structure-averaged intervals (the posterior's, as the Bayesian baseline's), and
        # the chosen structure's own beside them
        averaged, _ = averaged_intervals(distilled, data, mixture)
        chosen = coefficient_intervals(distilled, data, mixture.level)
        info["intervals"] = per_state(
            [
                (t, term, e["interval"])
                for t, terms in averaged.items()
                for term, e in terms.items()
            ],
            distilled.routes,
        )
        info["intervals_chosen"] = per_state(
            [(e["target"], e["term"], e["interval"]) for e in chosen.values()], distilled.routes
        )
        try:
            band = mixture.band(distilled, data, problem.forecast_times, initial[None], [0])
        except (RuntimeError, ValueError, np.linalg.LinAlgError) as err:
            info["mixture_error"] = f"{type(err).__name__}: {err}"
            return None
        info["uq_seconds"] = round(time.perf_counter() - start, 2)
        info["mixture"] = {"structures": band.components, "n_failed": band.n_failed}
        if band.profiles:
            info["mixture"]["profiles"] = band.profiles
        if not band.usable:
            return None
        return band.state_lower[0], band.state_upper[0]

    def band(
        self,
        refitted,
        problem: Problem,
        initial: np.ndarray,
        info: dict[str, Any],
        options: Any = None,
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Lower and upper ``(time, state)`` of the refitted twin's band from ``initial
        (state,)`` with condition 0's inputs, or None; ``options``: the keyword arguments of
        :class:`ude.distill.uncertainty.LaplaceInterval` (None or ``n_samples: 0``: no band);
        what happened goes into ``info``."""
        from omegaconf import OmegaConf

        from ude.distill.uncertainty import LaplaceInterval

        if options is None or options.get("n_samples", 1) <= 0:
            return None, None
        start = time.perf_counter()
        interval = LaplaceInterval(**OmegaConf.to_container(options, resolve=True))
        try:
            band = interval.forecast(
                refitted, problem.measurements, problem.forecast_times, initial[None], [0]
            )
        except (RuntimeError, ValueError, np.linalg.LinAlgError) as err:
            info["interval_error"] = f"{type(err).__name__}: {err}"
            return None, None
        info["interval"] = {
            "n_samples": band.n_samples,
            "n_failed": band.n_failed,
            "seconds": round(time.perf_counter() - start, 2),
            # the twin's residuals' dependence and the share of the entries its Laplace counts
            "residual_dependence": band.laplace.dependence.as_dict(),
            # and whether its noise differed between conditions (the sandwich applied)
            "noise_blocks": band.laplace.noise_blocks.as_dict(),
        }
        if not band.usable:
            return None, None
        return band.lower[0], band.upper[0]


def by_state(
    inclusion: dict[str, dict[str, float]], routes: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """``{state: {term: p}}`` of inclusion probabilities ``{target: {term: p}}``: a neural
    reaction's flux (SEIR's ``infection``) counts in each state it changes (``routes``, as
    :meth:`ModelSpec.neural_routes`), a state's own target in that state. The truth is scored
    per state: keyed by the reaction, every term of it counted as false."""
    out: dict[str, dict[str, float]] = {}
    for target, terms in inclusion.items():
        for state in routes.get(target, {target: 1.0}):
            mine = out.setdefault(state, {})
            for term, p in terms.items():
                mine[term] = max(mine.get(term, 0.0), p)
    return out


def per_state(
    intervals: list[tuple[str, str, list[float]]], routes: dict[str, dict[str, float]]
) -> dict[str, dict[str, list[float]]]:
    """``{state: {term: [lo, hi]}}`` of coefficient intervals ``(target, term, [lo, hi])``: a
    neural reaction's flux counts in each state it changes, its interval times the state's
    stoichiometric change (``routes``, as :func:`by_state`)."""
    out: dict[str, dict[str, list[float]]] = {}
    for target, term, interval in intervals:
        for state, change in routes.get(target, {target: 1.0}).items():
            out.setdefault(state, {})[term] = sorted(change * v for v in interval)
    return out


METHODS: dict[str, type[Method]] = {
    m.name: m for m in (UDE, SINDy, WeakSINDy, ESINDy, BayesianSparse, NeuralODE)
}
"""The built-in methods by name; a user adds one by a ``_target_`` in the suite config."""
