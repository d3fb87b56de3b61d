"""Refit of a twin's learnable parameters (coefficients, K, initial states) through the ODE."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ude.config_check import REFIT_OPTIMIZERS
from ude.data.datamodule import ConditionDataset
from ude.data.measurements import Measurements
from ude.distill import gauss_newton
from ude.fit import make_module
from ude.model.hybrid import HybridODE, build_hybrid
from ude.model.initial_scale import initial_parameter, lift_amounts, set_initial
from ude.model.solver import FIXED, Solver, SolverFailed
from ude.spec.model_spec import ModelSpec

INFEASIBLE = 1e12
"""The loss of a trial point where the model cannot be solved (far above any real loss)."""
BLOWN_UP = 1e6
"""A normalised MSE above this (predictions a thousand times the data's scale) at the start:
a fixed-step solve that went unstable, finite or not, which the fallback solver redoes."""


@dataclass
class RefitResult:
    """A refitted twin model, its parameter values and its fit to the data.

    ``values``: one number per parameter (a per-condition one's typical value:
    :meth:`ude.model.parameters.SpecParameters.typical`); ``individual``: each per-condition
    parameter's values ``(condition,)``; ``population``: each population parameter's median
    (mean) and spread. ``nmse``: mean squared residual over measured entries, each observable
    scaled by its RMS; ``n_points``: measured entries; ``ok``: False when the solve failed or
    diverged, or the twin was refused (``refused``: why; :mod:`ude.distill.admissible`;
    ``refused_nmse``: its fit before it was refused).
    ``trace``: twice the summed NLL (a criterion's data term) at the end of each L-BFGS step
    of 20 iterations that stayed where the model solves, in order over the refit's passes:
    how far it was still moving when it stopped (``python bench/refit_convergence.py``).
    """

    model: HybridODE | None
    values: dict
    nmse: float
    n_points: int
    ok: bool
    iterations: int
    individual: dict[str, list[float]] = field(default_factory=dict)
    population: dict[str, dict] = field(default_factory=dict)
    refused: str | None = None
    trace: list[float] = field(default_factory=list)
    refused_nmse: float | None = None


def _batch(measurements: Measurements) -> dict[str, torch.Tensor]:
    ds = ConditionDataset(measurements)
    items = [ds[i] for i in range(len(ds))]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@torch.no_grad()
def _solves(module, batch: dict[str, torch.Tensor]) -> bool:
    """The loss is finite and the predictions stay on the data's scale (an unstable rk4 step
    can grow a solution a hundredfold per step and stay finite)."""
    try:
        losses = module.losses(batch)
    except SolverFailed:
        return False
    return bool(torch.isfinite(losses["loss"])) and float(losses["mse"]) < BLOWN_UP


def _loss_value(module, batch: dict[str, torch.Tensor]) -> float:
    """The loss at the parameters' current values, without its gradient (the next L-BFGS
    step evaluates that itself), or :data:`INFEASIBLE` where the model does not solve. The
    compiled solve then records no stages and runs no adjoint: about half the cost of an
    evaluation with its gradient."""
    with torch.no_grad():
        try:
            loss = module.losses(batch)["loss"]
        except SolverFailed:
            return INFEASIBLE
    return float(loss) if torch.isfinite(loss) else INFEASIBLE


class TwinRefit:
    """Fits a symbolic twin (no neural slots) to the data through the ODE solver with L-BFGS
    on the Gaussian NLL of :class:`ude.train.module.UDEModule` (noise learned).

    Args:
        max_iter: L-BFGS iterations at most.
        tol: stop when the relative loss change over 20 iterations is below this.
        criterion_tol: also stop when those 20 iterations changed the summed NLL, in the
            units of a selection criterion (twice the summed NLL), by less than this
            (None: only ``tol``). A candidate's score needs no more: the selection's choices
            are units apart, while the relative rule chases the solve's last digits (yeast
            glycolysis, 8 conditions: every one of 27 scoring refits ran its 300 iterations,
            the last 140 changing the criterion by less than 0.2 in all).
        method, rtol, atol, step_size: the ODE solver (:class:`ude.model.Solver`); a fixed-step
            method with ``step_size=None`` steps on the data's time grid.
        twin_method: the solver the refitted twin keeps (its ``twin.json``'s, its bands'
            draws, at ``rtol`` and ``atol``) where it is not the one it is fitted with (None:
            that one), if it solves the twin over the data (else the twin keeps the one it was
            fitted with). A twin is fitted fastest by the compiled ``rodas5p`` whatever its
            stiffness, while a non-stiff twin's batched draws are fastest with dopri5 in torch.
        learn_initial: refit the initial states too.
        fallback: the adaptive method used instead of a fixed-step one whose solve already
            fails at the start (a step too long for the candidate's fastest rate, e.g. rk4 on
            the data's grid while a substrate is consumed fast: non-finite, or finite but
            blown up, see :data:`BLOWN_UP`); None: none. The default is
            ude's stiff solver, ``rodas5p`` (compiled for a twin: no networks): such a
            candidate's fast rates would make dopri5 crawl. It runs at ``fallback_rtol``, about
            the accuracy of the fixed grid it replaces.
        learn_noise: refit the noise levels too (False: they stay at ``fit``'s ``noise``).
        learn_population: refit the populations' medians and spreads with the individual
            values (False: they stay, and the individual values are fitted under them: a new
            subject personalised under a frozen population).
        settle_first: besides the joint fit, a second one that fits the other parameters
            with the learned initial states held at their start first, then everything
            together; the better of the two is kept. For a start whose initial states
            already fit (the trained model's, a refitted twin's), as the distillation's
            candidates have. The initial states are the steepest directions (an oscillator's
            phase hangs on them), and L-BFGS on all at once spends its line searches on them
            and leaves a rate law's constant where it began (Goldbeter, 4 conditions, ``K`` of
            ``X*C/(K + C)`` from 0.2: 0.19 and trajectory NMSE 0.038; settled first, 0.030 and
            0.015 from starts of 0.0034, 0.2 and 0.5; the truth's is 0.02). Settling alone can
            end worse: Goodwin at 10 % noise, its Hill repression settled to ``n`` 15 on its
            bound (criterion -373.9; the truth's ``n`` is 10) where the joint fit reaches
            10.7 (-375.2), and from poor initial states (the noisy first data values) NMSE
            1.34 against 0.69. Off by default: it doubles the refit's cost.
        grow_from: besides the joint fit, one that fits the first ``grow_from`` of the time
            span first, then all of it; the better is kept (None: none). An oscillator's
            least squares over the whole span has a local minimum for each phase slip, and a
            start whose rates or initial states are off (a latent species' guessed by the
            trained network) slips into one; on the first part of the span the phase has not
            yet slipped, and that fit is a start near the right minimum for the whole.
            Yeast glycolysis with ATP and extracellular pyruvate unmeasured (the benchmark's
            unobserved 0.34 cell): the truth ``-k5*S6`` refitted from the trained model's
            initial states and ``k5`` 0.68 ended at trajectory NMSE 0.21 (``k5`` 1.94), and
            from the first half grown to all at 0.0046 (``k5`` 1.284; the truth's 1.28).
        optimizer: ``lbfgs``, or ``gauss_newton``: damped Gauss-Newton steps on the residuals'
            Jacobian (:mod:`ude.distill.gauss_newton`) where the twin's solves replay (the
            compiled rodas5p, Gaussian noise, no populations), after L-BFGS's first
            ``gauss_newton_after`` iterations (L-BFGS elsewhere); at most
            ``gauss_newton_iter`` iterations, its stopping rules ``tol`` and
            ``criterion_tol`` per iteration. Where it did not converge (a badly fitting
            candidate's large residuals make its steps small and heavily damped) L-BFGS goes
            on from where it stopped. From the start, Gauss-Newton takes a refit into
            another basin than L-BFGS's more often than not (yeast glycolysis, 4
            conditions: 22 of 35 refits ended more than 6 apart, 6 of them worse).
            ``auto``: ``gauss_newton`` where the data have more than one condition, ``lbfgs``
            with one (the selection's default: docs/performance.md has the measurements).
        nonnegative_initial: the learned initial values of the states the twin's spec declares
            ``nonnegative`` (amounts) held at or above zero, on the log of the value
            (:mod:`ude.model.initial_scale`). Free, a refit can start an amount at a
            Michaelis-Menten term's pole (Goldbeter: ``M`` at ``-K2`` in 16 of 20 noise draws,
            ``bench/initial_amounts.py``). Off by default: the benchmark with it on (every
            ``ude`` cell, docs/benchmark_history.md, thirty-fifth session) found the truth
            in 51 cells against 55 and covered 0.891 of the true forecasts against 0.905.
        restarts: after the fit, L-BFGS started again with a fresh history, at most this many
            times, while each start lowers the criterion (twice the summed NLL) by more than
            ``restart_gain``. L-BFGS's curvature pairs from far off can leave it taking
            ever shorter steps along a valley it has not turned into (a rate law's constant
            against the rates beside it), and it stops on its tolerance short of the optimum;
            a fresh history steps along the gradient again. 0: none.
        restart_gain: the least gain in criterion units for which a start counts as a gain.
    """

    def __init__(
        self,
        max_iter: int = 400,
        tol: float = 1e-10,
        criterion_tol: float | None = None,
        method: str = "dopri5",
        rtol: float = 1e-6,
        atol: float = 1e-8,
        step_size: float | None = None,
        twin_method: str | None = None,
        learn_initial: bool = True,
        fallback: str | None = "rodas5p",
        fallback_rtol: float = 1e-4,
        learn_noise: bool = True,
        learn_population: bool = True,
        settle_first: bool = False,
        grow_from: float | None = None,
        nonnegative_initial: bool = False,
        optimizer: str = "lbfgs",
        gauss_newton_iter: int = 20,
        gauss_newton_after: int = 60,
        restarts: int = 0,
        restart_gain: float = 0.1,
    ):
        if optimizer not in REFIT_OPTIMIZERS:
            expected = ", ".join(REFIT_OPTIMIZERS)
            raise ValueError(f"optimizer={optimizer!r}: expected one of {expected}")
        if restarts < 0:
            raise ValueError(f"restarts={restarts!r}: expected a count >= 0")
        self.restarts = restarts
        self.restart_gain = restart_gain
        self.optimizer = optimizer
        self.gauss_newton_iter = gauss_newton_iter
        self.gauss_newton_after = gauss_newton_after
        if grow_from is not None and not 0 < grow_from < 1:
            raise ValueError(f"grow_from={grow_from!r}: expected a fraction in (0, 1) or None")
        self.settle_first = settle_first
        self.grow_from = grow_from
        self.nonnegative_initial = nonnegative_initial
        self.learn_noise = learn_noise
        self.learn_population = learn_population
        self.max_iter = max_iter
        self.tol = tol
        self.criterion_tol = criterion_tol
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.step_size = step_size
        self.twin_method = twin_method
        self.learn_initial = learn_initial
        self.fallback = fallback
        self.fallback_rtol = fallback_rtol

    def _descend(self, module, batch, params, done: int, trace: list[float]) -> int:
        """L-BFGS on ``params`` (at most ``max_iter`` iterations); returns the iterations
        counted so far. L-BFGS may leave the region where the model solves: it starts again
        from the last good point with a ten times shorter first step (its first step is as long
        as the learning rate in every parameter's own units: an initial state of 1e-3 needs
        1e-4).

        With ``optimizer="gauss_newton"`` where it applies: L-BFGS's first
        ``gauss_newton_after`` iterations (they choose the basin, as they do alone), then
        Gauss-Newton to the optimum; where that does not converge, L-BFGS goes on."""
        if self._gauss_newton(module):
            until = min(self.gauss_newton_after, self.max_iter)
            iterations, converged = self._lbfgs(module, batch, params, done, trace, until)
            if converged:
                return iterations
            steps, converged = gauss_newton.levenberg_marquardt(
                module,
                batch,
                params,
                lambda: _loss_value(module, batch),
                self.gauss_newton_iter,
                self.tol,
                self.criterion_tol,
                trace,
            )
            if not converged:  # L-BFGS's budget: max_iter of its iterations in all
                iterations, _ = self._lbfgs(
                    module, batch, params, iterations, trace, self.max_iter, done
                )
            return iterations + steps
        return self._lbfgs(module, batch, params, done, trace, self.max_iter)[0]

    def _gauss_newton(self, module) -> bool:
        """Whether this refit ends with Gauss-Newton steps: where they apply, with
        ``optimizer="gauss_newton"``, or with ``"auto"`` where the data have more than one
        condition (L-BFGS learns the curvature of every condition's initial states from
        gradients, while the Jacobian costs a solve per state whatever their number)."""
        if self.optimizer == "lbfgs" or not gauss_newton.applies(module.model):
            return False
        return self.optimizer == "gauss_newton" or module.model.initial.shape[0] > 1

    def _restart(self, module, batch, params, done: int, trace: list[float]) -> int:
        """L-BFGS again from where the fit stopped, with a fresh history, up to ``restarts``
        times while each start gains more than ``restart_gain`` in criterion units; each start
        has the full ``max_iter``. Returns the iterations counted so far."""
        iterations = done
        for _ in range(self.restarts):
            before = (
                trace[-1] if trace else 2 * float(batch["mask"].sum()) * _loss_value(module, batch)
            )
            iterations, _ = self._lbfgs(module, batch, params, iterations, trace, self.max_iter)
            if not trace or before - trace[-1] <= self.restart_gain:
                break
        return iterations

    def _lbfgs(
        self, module, batch, params, done: int, trace, limit: int, start: int | None = None
    ) -> tuple[int, bool]:
        """L-BFGS from the largest first step that stays where the model solves, until
        ``limit`` iterations after ``start`` (default ``done``); the iterations counted and
        whether a stopping rule (not the limit) ended it."""
        start = done if start is None else start
        iterations, converged = done, False
        for lr in (1.0, 0.1, 0.01, 1e-3, 1e-4):
            iterations, failed, converged = self._run(
                module, batch, params, lr, iterations, trace, start, limit
            )
            if not failed:
                break
        return iterations, converged

    def _run(
        self,
        module,
        batch,
        params,
        lr: float,
        done: int,
        trace: list[float],
        start: int = 0,
        limit: int | None = None,
    ) -> tuple[int, bool, bool]:
        """L-BFGS steps of 20 iterations until ``limit`` (default ``max_iter``) after
        ``start``; the iterations counted, whether it left the region where the model solves
        (its values then the last good ones) and whether a stopping rule ended it."""
        limit = self.max_iter if limit is None else limit
        opt = torch.optim.LBFGS(
            params, lr=lr, max_iter=20, history_size=30, line_search_fn="strong_wolfe"
        )
        good = [p.detach().clone() for p in params]
        last = np.inf
        iterations = done
        n = float(batch["mask"].sum())  # the loss is a mean over the measured entries

        def closure():
            # a trial point whose solve fails or blows up (e.g. a line search step that put a
            # small initial state below zero) is worse than any other: the line search then
            # shortens the step instead of the refit giving up
            opt.zero_grad()
            try:
                loss = module.losses(batch)["loss"]
            except SolverFailed:
                loss = None
            if loss is None or not torch.isfinite(loss):
                return torch.tensor(INFEASIBLE, dtype=torch.float64)
            loss.backward()
            return loss

        try:
            while iterations - start < limit:
                loss = float(opt.step(closure).detach())
                iterations += 20
                if loss >= INFEASIBLE or not all(torch.isfinite(p).all() for p in params):
                    raise SolverFailed("the refit left the region where the model solves")
                after = _loss_value(module, batch)
                if after >= INFEASIBLE:
                    raise SolverFailed("the line search ended where the model does not solve")
                trace.append(2 * n * after)
                good = [p.detach().clone() for p in params]
                if abs(last - loss) < self.tol * max(1.0, abs(loss)):
                    return iterations, False, True
                if self.criterion_tol is not None and 2 * n * abs(last - loss) < self.criterion_tol:
                    return iterations, False, True
                last = loss
        except SolverFailed:
            with torch.no_grad():
                for p, g in zip(params, good, strict=True):
                    p.copy_(g)
            return iterations, True, False
        return iterations, False, False

    def continue_fit(self, model: HybridODE, measurements: Measurements) -> float:
        """Refit ``model``'s learnable parameters (those with a gradient; a parameter held
        has none) from where they are, as :meth:`fit`'s joint pass does, in place; returns
        the criterion's data term ``n log(NMSE)`` at the end (inf where the model does not
        solve). For a profile: one parameter held at each of a sequence of values, the
        others following from the previous value's optimum (:mod:`ude.uq.ridge`)."""
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            module = make_module(model, measurements, loss="nll")
            batch = _batch(measurements)
            params = [p for p in module.parameters() if p.requires_grad]
            self._descend(module, batch, params, 0, [])
            try:
                with torch.no_grad():
                    mse = float(module.losses(batch)["mse"])
            except SolverFailed:
                return np.inf
        finally:
            torch.set_default_dtype(previous)
        n = int(np.isfinite(measurements.values).sum())
        return n * float(np.log(mse)) if np.isfinite(mse) and mse > 0 else np.inf

    def _fit_early(self, model, module, measurements: Measurements, params, fraction) -> int:
        """L-BFGS on the data of the first ``fraction`` of the time span (every condition's
        points up to then; their scales the whole span's); returns its iterations. Its
        criterion is not the whole data's: not traced."""
        t0, t1 = float(measurements.times[0]), float(measurements.times[-1])
        early = measurements.until(t0 + fraction * (t1 - t0))
        if len(early.times) < 3 or not np.isfinite(early.values).any():
            return 0
        part = make_module(model, early, loss="nll")
        part.obs_scale.copy_(module.obs_scale)
        return self._descend(part, _batch(early), params, 0, [])

    def _centre(
        self, module, batch, params, trace: list[float], rounds: int = 8, tol: float = 1e-5
    ) -> int:
        """Alternate the populations' exact MAP given the individual values
        (:meth:`ude.model.parameters.SpecParameters.centre_populations`) with L-BFGS on the
        rest until the populations settle: L-BFGS alone leaves them far off (their direction
        is seen only by the prior, which is small beside the data's likelihood). Returns the
        L-BFGS iterations used."""
        used = 0
        budget = max(self.max_iter // 4, 20)
        for _ in range(rounds):
            if module.model.parameters_.centre_populations() < tol:
                break
            done, failed, _ = self._run(module, batch, params, 1.0, self.max_iter - budget, trace)
            used += done - (self.max_iter - budget)
            if failed:
                break
        return used

    def fit(
        self,
        twin: ModelSpec,
        measurements: Measurements,
        initial: np.ndarray | None = None,
        noise: np.ndarray | None = None,
        held_initial: np.ndarray | None = None,
        initial_prior: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> RefitResult:
        """Refit ``twin`` on ``measurements`` from ``initial (condition, state)`` (default:
        the data's first values) and noise levels ``noise (observable,)`` (default: 10 % of
        each observable's scale); ``held_initial (condition, state)``: initial states held
        at their start (besides those the data give); ``initial_prior``: the learned initial
        states' Gaussian prior, mean and sd each ``(condition, state)`` (an infinite sd: none;
        :meth:`ude.model.hybrid.HybridODE.set_initial_prior`)."""
        # in float64 throughout (not only while building): the selection's refits run in
        # threads, and the default dtype is one setting for all of them
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            args = (twin, measurements, initial, noise, held_initial, initial_prior)
            best = self._fit(*args, settle=False)
            others = []
            if self.settle_first and self.learn_initial:  # else the same as the joint fit
                others.append({"settle": True})
            if self.grow_from is not None:
                others.append({"settle": False, "grow_from": self.grow_from})
            for how in others:
                other = self._fit(*args, **how)
                if other.ok and other.nmse < best.nmse:
                    best = other
            if self.twin_method is not None and best.ok:
                self._hand_over(best.model, measurements)
            return best
        finally:
            torch.set_default_dtype(previous)

    def _hand_over(self, model: HybridODE, measurements: Measurements) -> None:
        """Give the refitted ``model`` its own solver, ``twin_method``, where that solves it
        over the data; a twin whose fitted rates make it stiff keeps the solver it was fitted
        with (Goodwin with a mass-action library: a twin of coefficients near 5e7 that cancel,
        which dopri5 could not take past t = 7e-4 in 5000 steps)."""
        fitted = model.solver
        if fitted.method == self.twin_method:  # a stiff twin fitted with its own solver
            return
        model.solver = Solver(self.twin_method, self.rtol, self.atol, max_steps=5000)
        if not _solves(make_module(model, measurements, loss="nll"), _batch(measurements)):
            model.solver = fitted

    def _fit(
        self,
        twin,
        measurements,
        initial,
        noise,
        held_initial,
        initial_prior,
        settle: bool,
        grow_from: float | None = None,
    ) -> RefitResult:
        dtype = torch.float64
        model = build_hybrid(
            twin,
            measurements,
            Solver(self.method, self.rtol, self.atol, self.step_size, max_steps=5000),
            learn_initial=self.learn_initial,
            nonnegative_initial=self.nonnegative_initial,
        )
        # through its scale where it has one (a PEtab init_'s, a declared amount's log)
        start = model.initial.detach() if initial is None else torch.as_tensor(initial, dtype=dtype)
        set_initial(model, lift_amounts(model, start))
        if noise is not None:
            with torch.no_grad():
                model.log_noise.copy_(torch.log(torch.as_tensor(noise, dtype=dtype)))
        if held_initial is not None:
            model.initial_known |= torch.as_tensor(held_initial, dtype=torch.bool)
        if initial_prior is not None:
            model.set_initial_prior(*(torch.as_tensor(x, dtype=dtype) for x in initial_prior))
        model.log_noise.requires_grad_(self.learn_noise)
        for p in [*model.parameters_.location.values(), *model.parameters_.log_spread.values()]:
            p.requires_grad_(self.learn_population)
        module = make_module(model, measurements, loss="nll")
        batch = _batch(measurements)
        if self.fallback and self.method in FIXED and not _solves(module, batch):
            model.solver = Solver(self.fallback, self.fallback_rtol, self.atol, max_steps=5000)
        params = [p for p in module.parameters() if p.requires_grad]
        iterations, trace = 0, []
        held = initial_parameter(model)
        rest = [p for p in params if p is not held]
        if settle and held.requires_grad and rest:
            held.requires_grad_(False)
            try:
                iterations = self._descend(module, batch, rest, iterations, trace)
            finally:
                held.requires_grad_(True)
        if grow_from is not None:
            iterations += self._fit_early(model, module, measurements, params, grow_from)
        iterations = self._descend(module, batch, params, iterations, trace)
        iterations = self._restart(module, batch, params, iterations, trace)
        if self.learn_population and len(model.parameters_.location):
            iterations += self._centre(module, batch, params, trace)
        ok = True
        try:
            with torch.no_grad():
                mse = float(module.losses(batch)["mse"])
        except SolverFailed:
            mse, ok = np.inf, False
        if not np.isfinite(mse):
            ok = False
        n = int(np.isfinite(measurements.values).sum())
        return RefitResult(
            model=model,
            values=model.parameters_.typical(),
            nmse=mse if ok else np.inf,
            n_points=n,
            ok=ok,
            iterations=iterations,
            individual={k: v for k, v in model.parameter_values().items() if isinstance(v, list)},
            population=model.population(),
            trace=trace,
        )
