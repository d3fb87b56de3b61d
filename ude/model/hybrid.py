"""HybridODE: known mechanistic terms + neural networks + initial states + observation model."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import sympy as sp
import torch
from torch import nn
from torch.nn.utils import parametrize

from ude.data.doses import Schedule
from ude.data.measurements import Measurements
from ude.errors import UdeError
from ude.model.doses import solve_with_doses
from ude.model.initial_scale import initial_transforms, scale_initial, set_initial
from ude.model.networks import MLP, FluxNetwork
from ude.model.numeric_rhs import NumericRHS, NumericSystem, UnsupportedNetwork
from ude.model.observation import log_density
from ude.model.parameters import _HALF_LOG_2PI, SpecParameters
from ude.model.solver import Solver
from ude.spec.compile import CompiledExpressions
from ude.spec.model_spec import ModelSpec, Parameter, load_spec
from ude.spec.observation import DISTRIBUTIONS, TRANSFORMATIONS


class HybridODE(nn.Module):
    """``dy/dt = known(y, u, p) + network(y, u)`` batched over conditions.

    ``forward(t, y)`` is the right-hand side for the solver, ``y (batch, state)``; the batch's
    conditions are set by :meth:`simulate`. Observables are expressions of the states.

    Args:
        spec: the model spec (known terms, neural slots, observables).
        observables: names of the measured observables, in the data's column order.
        n_conditions: number of conditions (initial states and per-condition parameters).
        inputs: per-condition inputs ``(condition, input)``.
        initial: initial states ``(condition, state)`` (the start of learning when learned).
        learn_initial: learn the initial states of each condition, or keep them fixed.
        initial_known: ``(condition, state)`` True where the initial state is known and stays
            fixed even when ``learn_initial``.
        initial_transforms: per state ``(state,)``, the scale and bounds its learned initial
            values are learned on (a :class:`~ude.spec.model_spec.Parameter`, as a learned
            parameter's; :mod:`ude.model.initial_scale`), or None: linear, unbounded.
        doses: each condition's doses (:mod:`ude.data.doses`), or None.
        nonnegative_fluxes: learned fluxes of irreversible reactions stay non-negative
            (:class:`~ude.model.networks.FluxNetwork`).
        state_scale, time_scale: typical state magnitude ``(state,)`` and time span, used to
            scale network inputs and outputs.
        noise: initial noise level per observable ``(observable,)`` (learned in the NLL).
    """

    def __init__(
        self,
        spec: ModelSpec,
        observables: list[str],
        n_conditions: int,
        inputs: torch.Tensor,
        initial: torch.Tensor,
        solver: Solver,
        state_scale: torch.Tensor,
        time_scale: float,
        noise: torch.Tensor,
        hidden: int = 32,
        depth: int = 2,
        activation: str = "tanh",
        learn_initial: bool = True,
        initial_known: torch.Tensor | None = None,
        doses: Sequence[Schedule] | None = None,
        nonnegative_fluxes: bool = False,
        initial_transforms: Sequence[Parameter | None] | None = None,
    ):
        super().__init__()
        self.spec = spec
        self.doses: list[Schedule] = [tuple(d) for d in doses] if doses else [()] * n_conditions
        self.solver = solver
        self.observable_names = list(observables)
        n_states = len(spec.states)
        self.known = CompiledExpressions(spec.known_rhs(), spec.symbols)
        self.parameters_ = SpecParameters(spec.parameters, n_conditions)
        self.networks = nn.ModuleList()
        self._slot_inputs: list[list[int]] = []
        self._slot_targets: list[list[int]] = []
        names = [*spec.states, *spec.inputs]
        deriv_scale = state_scale / time_scale
        for slot in spec.neural:
            idx_in = [names.index(n) for n in slot.inputs]
            idx_out = [spec.states.index(n) for n in slot.targets]
            in_scale = torch.cat([state_scale, torch.ones(len(spec.inputs))])[idx_in]
            out_scale = deriv_scale[idx_out].clone()
            stoich = None
            if slot.stoichiometry is not None:
                # Neural reactions: the network gives fluxes, applied through the stoichiometry.
                stoich = torch.tensor(slot.stoichiometry, dtype=deriv_scale.dtype)
                out_scale = _flux_scale(stoich, out_scale)
            net = MLP(
                len(idx_in),
                slot.n_outputs,
                hidden,
                depth,
                activation,
                in_scale=in_scale,
                out_scale=out_scale,
            )
            if stoich is not None:
                irreversible = {r.name for r in spec.reactions if not r.reversible}
                positive = torch.tensor([r in irreversible for r in slot.reactions])
                net = FluxNetwork(net, stoich, positive if nonnegative_fluxes else None)
            self.networks.append(net)
            self._slot_inputs.append(idx_in)
            self._slot_targets.append(idx_out)
        self.observe_fn = CompiledExpressions(
            [_observable_expr(spec, o) for o in observables], spec.symbols
        )
        # Observables with a noise model of the spec (PEtab's): its sigma, transformation and
        # distribution; the others get the learned Gaussian noise.
        models = [spec.noise.get(o) for o in observables]
        self.has_noise_models = any(m is not None for m in models)
        if self.has_noise_models:
            self.sigma_fn = CompiledExpressions(
                [m.sigma if m is not None else sp.Integer(1) for m in models], spec.symbols
            )
            self.register_buffer("_noise_given", torch.tensor([m is not None for m in models]))
            codes = [
                (TRANSFORMATIONS.index(m.transformation), DISTRIBUTIONS.index(m.distribution))
                if m is not None
                else (0, 0)
                for m in models
            ]
            self.register_buffer("_noise_codes", torch.tensor(codes, dtype=torch.long))
        self.register_buffer("inputs", inputs)
        self.register_buffer("state_scale", state_scale)
        self.register_buffer("deriv_scale", deriv_scale)
        self.initial = nn.Parameter(initial.clone(), requires_grad=learn_initial)
        known = torch.zeros(initial.shape, dtype=torch.bool)
        self.register_buffer(
            "initial_known", known if initial_known is None else initial_known, persistent=False
        )
        if learn_initial and initial_transforms is not None:
            scale_initial(self, initial_transforms)
        # the learned initial states' Gaussian prior (set_initial_prior); none by default
        self.register_buffer("initial_prior_mean", None, persistent=False)
        self.register_buffer("initial_prior_sd", None, persistent=False)
        self.log_noise = nn.Parameter(torch.log(noise))
        self._context: torch.Tensor | None = None
        self.n_states = n_states

    # -- pieces of the right-hand side -------------------------------------------------------
    def context(self, condition: torch.Tensor) -> torch.Tensor:
        """Inputs and parameter values of each condition ``(batch, input + parameter)``."""
        return torch.cat([self.inputs[condition], self.parameters_(condition)], dim=-1)

    def known_terms(self, y: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Known (and discovered) terms ``(batch, state)``."""
        return self.known(torch.cat([y, context], dim=-1))

    def neural_terms(self, y: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Network outputs placed on their target states ``(batch, state)``, zero elsewhere."""
        states = list(range(self.n_states))
        if len(self.networks) == 1 and self._slot_targets[0] == states:
            # The common case (one network on all states) skips the gather/scatter: the
            # right-hand side is called hundreds of times per solve.
            idx_in = self._slot_inputs[0]
            features = y if idx_in == states else self._features(y, context)[..., idx_in]
            return self.networks[0](features)
        out = y.new_zeros(y.shape)
        features = self._features(y, context)
        for net, idx_in, idx_out in zip(
            self.networks, self._slot_inputs, self._slot_targets, strict=True
        ):
            out[..., idx_out] = out[..., idx_out] + net(features[..., idx_in])
        return out

    def fluxes(self, y: torch.Tensor, context: torch.Tensor) -> dict[str, torch.Tensor]:
        """The learned flux ``(batch,)`` of every neural reaction, by reaction name."""
        out = {}
        features = self._features(y, context)
        for slot, net, idx_in in zip(
            self.spec.neural, self.networks, self._slot_inputs, strict=True
        ):
            if isinstance(net, FluxNetwork):
                values = net.fluxes(features[..., idx_in])
                out.update({r: values[..., j] for j, r in enumerate(slot.reactions)})
        return out

    def _features(self, y: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """What networks may see: states then inputs ``(batch, state + input)``."""
        return torch.cat([y, context[..., : len(self.spec.inputs)]], dim=-1)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.rhs(y, self._context)

    def numeric_rhs(self, context: torch.Tensor | None = None) -> NumericSystem | None:
        """The right-hand side for the conditions' ``context (batch, input + parameter)``
        (default: the current solve's) frozen to numpy, for the stiff solver's fast path
        (:class:`~ude.model.numeric_rhs.NumericSystem`). None for a network that has no numpy
        form (the solver then differentiates through torch)."""
        context = self._context if context is None else context
        if context is None:
            return None
        try:
            rhs = NumericRHS.from_model(self, context)
        except UnsupportedNetwork:
            return None
        params = [p for p in self.networks.parameters() if p.requires_grad]
        return NumericSystem(rhs, context, params, self.rhs)

    def rhs(self, y: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The right-hand side ``(P, state)`` at rows ``y (P, state)`` with their own
        contexts ``(P, input + parameter)``."""
        if not self._slot_targets:  # a symbolic twin: no network terms to add
            return self.known_terms(y, context)
        return self.known_terms(y, context) + self.neural_terms(y, context)

    # -- solving and observing ---------------------------------------------------------------
    def simulate(
        self, times: torch.Tensor, condition: torch.Tensor, y0: torch.Tensor | None = None
    ) -> torch.Tensor:
        """States ``(batch, time, state)`` at ``times`` for the batch's ``condition`` indices,
        each dosed by its condition's doses (a state at a dose's time is the one before it)."""
        self._context = self.context(condition)
        if y0 is None:
            # Initial values the data give (a conditions table's init_<state>) get no
            # gradient, so they stay as given while the others are learned.
            y0 = self.initial[condition]
            y0 = torch.where(self.initial_known[condition], y0.detach(), y0)
        context = self._context
        schedules = [self.doses[c] for c in condition.tolist()]
        try:
            return solve_with_doses(
                self.solver,
                lambda rate: _Conditioned(self, context, rate),
                y0,
                times,
                schedules,
                self.spec.states,
            ).transpose(0, 1)
        finally:
            self._context = None

    def observe(self, states: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Observables ``(batch, time, observable)`` from states ``(batch, time, state)``."""
        ctx = self.context(condition)[:, None, :].expand(*states.shape[:2], -1)
        return self.observe_fn(torch.cat([states, ctx], dim=-1))

    def noise_nll(
        self,
        states: torch.Tensor,
        pred: torch.Tensor,
        condition: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        sigma: torch.Tensor,
    ) -> torch.Tensor:
        """Mean negative log-likelihood over measured entries under the spec's noise models.

        ``states (batch, time, state)``, ``pred (batch, time, observable)``; ``values``,
        ``mask`` ``(batch, time, replicate, observable)``; ``sigma`` (broadcastable to
        ``values``) for the observables without a noise model of their own.
        """
        ctx = self.context(condition)[:, None, :].expand(*states.shape[:2], -1)
        spec_sigma = self.sigma_fn(torch.cat([states, ctx], dim=-1))[:, :, None, :]
        sig = torch.where(self._noise_given, spec_sigma, sigma)
        y = torch.where(mask, values, torch.ones_like(values))  # log scales: no log(0) off-mask
        h = pred[:, :, None, :].expand_as(values)
        h = torch.where(mask, h, torch.ones_like(h))
        ll = log_density(y, h, sig, self._noise_codes[:, 0], self._noise_codes[:, 1])
        return -(ll * mask).sum() / mask.sum().clamp(min=1)

    def set_initial_prior(self, mean: torch.Tensor, sd: torch.Tensor) -> None:
        """Give the learned initial states a Gaussian prior, ``mean`` and ``sd`` each
        ``(condition, state)``; an infinite ``sd``: no prior on that entry (nor on known
        initial states, which are not learned). A new subject's initial states under the
        population of those the twin was fitted on (:mod:`ude.twin.personalise`)."""
        like = self.initial.detach()
        self.initial_prior_mean = torch.as_tensor(mean, dtype=like.dtype, device=like.device)
        self.initial_prior_sd = torch.as_tensor(sd, dtype=like.dtype, device=like.device)

    def prior_nll(self) -> torch.Tensor:
        """Negative log prior density of the learned values: the parameters'
        (:meth:`SpecParameters.prior_nll`) and the initial states' (:meth:`set_initial_prior`)."""
        total = self.parameters_.prior_nll()
        if self.initial_prior_sd is None or not self.initial.requires_grad:
            return total
        used = torch.isfinite(self.initial_prior_sd) & ~self.initial_known
        sd = torch.where(used, self.initial_prior_sd, torch.ones_like(self.initial_prior_sd))
        z = (self.initial - self.initial_prior_mean) / sd
        nll = 0.5 * z * z + torch.log(sd) + _HALF_LOG_2PI
        return total + torch.where(used, nll, torch.zeros_like(nll)).sum()

    @property
    def noise(self) -> torch.Tensor:
        return torch.exp(self.log_noise)

    def select_conditions(self, conditions: list[int]) -> HybridODE:
        """A copy restricted to ``conditions`` (indices, in their new order): their initial
        states, inputs and per-condition parameter values; networks and shared parameters
        copied as they are. The model itself when that is all of them, in order."""
        if list(conditions) == list(range(self.initial.shape[0])):
            return self
        idx = torch.as_tensor(list(conditions), dtype=torch.long, device=self.initial.device)
        out = copy.deepcopy(self)
        if parametrize.is_parametrized(out, "initial"):
            # the scaled entries' mask first: setting the values goes through it
            scaled = out.parametrizations.initial[0]
            scaled.mask = scaled.mask[idx].clone()
            set_initial(out, self.initial[idx].detach().clone())
        else:
            with torch.no_grad():
                out.initial = nn.Parameter(self.initial[idx].clone(), self.initial.requires_grad)
        out.parameters_.select(idx)
        out.doses = [self.doses[i] for i in conditions]
        out.inputs = self.inputs[idx].clone()
        out.initial_known = self.initial_known[idx].clone()
        if self.initial_prior_sd is not None:
            out.initial_prior_mean = self.initial_prior_mean[idx].clone()
            out.initial_prior_sd = self.initial_prior_sd[idx].clone()
        return out

    def parameter_values(self) -> dict:
        return self.parameters_.values()

    def population(self) -> dict[str, dict]:
        """The population parameters' median (mean) and spread
        (:meth:`SpecParameters.population`)."""
        return self.parameters_.population()


class _Conditioned(nn.Module):
    """``model``'s right-hand side for the conditions of one solve: it holds their context
    (and the infusion ``rate (batch, state)`` of the segment, or None), so a solver that calls
    it after the solve (the adjoint method's backward pass) still has it, and gradients reach
    the parameters behind the context."""

    def __init__(self, model: HybridODE, context: torch.Tensor, rate: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.context = context
        self.rate = rate

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dy = self.model.rhs(y, self.context)
        return dy if self.rate is None else dy + self.rate

    def numeric_rhs(self) -> NumericSystem | None:
        # an infusion's rate is not part of the frozen numpy system: the generic path
        return self.model.numeric_rhs(self.context) if self.rate is None else None


def _flux_scale(stoich: torch.Tensor, deriv_scale: torch.Tensor) -> torch.Tensor:
    """Typical size of each flux ``(reaction,)``: the largest ``deriv_scale / |coefficient|``
    over the targets it changes (a latent target's scale is often a guess; the largest is
    that of the species the flux visibly moves)."""
    ratio = deriv_scale[:, None] / stoich.abs().clamp_min(1e-12)
    ratio = torch.where(stoich != 0, ratio, torch.zeros_like(ratio))
    return ratio.max(dim=0).values


def _observable_expr(spec: ModelSpec, name: str) -> sp.Expr:
    if name in spec.observables:
        return spec.observables[name]
    if name in spec.states:
        return sp.Symbol(name)
    raise UdeError(
        f"data column '{name}' matches no state or observable of the spec",
        source=spec.source or spec.name,
        fix="spec names: " + ", ".join([*spec.states, *spec.observables]),
    )


def build_hybrid(
    spec: str | ModelSpec,
    measurements: Measurements,
    solver: Solver,
    hidden: int = 32,
    depth: int = 2,
    activation: str = "tanh",
    learn_initial: bool = True,
    latent_initial: float = 1.0,
    nonnegative_fluxes: bool = False,
    ensemble: int = 1,
    nonnegative_initial: bool = False,
) -> HybridODE:
    """A HybridODE for ``spec`` sized and scaled from ``measurements``.

    Observed states start from their first measured value (or the data's known initial state);
    latent states from the known initial state, the spec's ``initial`` value, the middle of the
    spec's ``bounds`` (their learned values then held inside) or ``latent_initial``.
    ``ensemble > 1``: that many independent models, each with its own network weights, solved
    together (:class:`ude.model.ensemble.HybridEnsemble`).
    ``nonnegative_initial``: the learned initial values of the states the spec declares
    ``nonnegative`` are held at or above zero (:mod:`ude.model.initial_scale`; a twin's
    refit).
    """
    if ensemble != 1:
        from ude.model.ensemble import HybridEnsemble

        if not isinstance(ensemble, int) or isinstance(ensemble, bool) or ensemble < 1:
            raise UdeError(f"got {ensemble!r}, expected an integer >= 1", source="model.ensemble")
        single = (spec, measurements, solver, hidden, depth, activation, learn_initial)
        members = [
            build_hybrid(*single, latent_initial, nonnegative_fluxes, 1, nonnegative_initial)
            for _ in range(ensemble)
        ]
        return HybridEnsemble(members)
    spec = load_spec(spec)
    obs = measurements.observables
    missing_inputs = [u for u in spec.inputs if u not in measurements.input_names]
    if missing_inputs:
        raise UdeError(
            f"input '{missing_inputs[0]}' of the spec is not in the data",
            source=measurements.source,
            fix="give it as a column of the conditions table",
        )
    for name in obs:
        _observable_expr(spec, name)
    first = measurements.first_observed()
    scale_obs = measurements.observable_scale()
    n_c, n_s = measurements.n_conditions, len(spec.states)
    initial = np.full((n_c, n_s), np.nan)
    state_scale = np.ones(n_s)
    for i, s in enumerate(spec.states):
        if s in obs:
            initial[:, i] = first[:, obs.index(s)]
            state_scale[i] = scale_obs[obs.index(s)]
        if s in measurements.initial:
            known = measurements.initial[s]
            initial[:, i] = np.where(np.isnan(known), initial[:, i], known)
            # A latent state known to start at 0 (a complex, a drug before dosing) keeps
            # scale 1: its size is unknown, and 1e-6 would freeze its network outputs.
            if s not in obs and np.isfinite(known).any() and np.nanmax(np.abs(known)) > 0:
                state_scale[i] = np.nanmax(np.abs(known))
        if s in spec.initial:  # the spec's initial value (e.g. from SBML) fills what data lack
            initial[:, i] = np.where(np.isnan(initial[:, i]), spec.initial[s], initial[:, i])
            if s not in obs and s not in measurements.initial and spec.initial[s] != 0:
                state_scale[i] = abs(spec.initial[s])
    for i, s in enumerate(spec.states):
        if s not in obs and measurements.state_scale.get(s, 0) > 0:
            # a reference simulation's size (a published model's) beats an initial value
            state_scale[i] = measurements.state_scale[s]
    for i, s in enumerate(spec.states):
        # a dosed state that is not measured: its size is what the doses put in
        given = [d.amount for sched in measurements.schedules() for d in sched if d.state == s]
        if s not in obs and given and max(given) > 0:
            state_scale[i] = max(given)
    known_initial = np.zeros((n_c, n_s), dtype=bool)
    for i, s in enumerate(spec.states):
        if s in measurements.initial:
            known_initial[:, i] = np.isfinite(measurements.initial[s])
    # a state the data do not measure, with a range in the spec (a fraction's [0, 1]): it
    # starts at the middle, and its learned initial values stay inside (the data place a
    # measured state's). Goldbeter's active fractions with cyclin alone measured, started at
    # latent_initial 1.0, were learned past the pole of (1 - M)/(K1 + 1 - M) at M = 1.005.
    bounded = {s: b for s, b in spec.bounds.items() if s not in obs}
    start = [sum(bounded[s]) / 2 if s in bounded else latent_initial for s in spec.states]
    initial = np.where(np.isnan(initial), np.asarray(start, dtype=float), initial)
    scales = {s: ("lin", lo, hi) for s, (lo, hi) in bounded.items()}
    col = [measurements.input_names.index(u) for u in spec.inputs]
    inputs = np.asarray(measurements.inputs, dtype=float)[:, col]
    span = float(measurements.times[-1] - measurements.times[0]) or 1.0
    t = torch.get_default_dtype()
    return HybridODE(
        spec,
        obs,
        n_c,
        inputs=torch.tensor(inputs, dtype=t),
        initial=torch.tensor(initial, dtype=t),
        solver=solver,
        state_scale=torch.tensor(state_scale, dtype=t),
        time_scale=span,
        noise=torch.tensor(0.1 * scale_obs, dtype=t),
        hidden=hidden,
        depth=depth,
        activation=activation,
        learn_initial=learn_initial,
        initial_known=torch.from_numpy(known_initial),
        doses=measurements.schedules(),
        nonnegative_fluxes=nonnegative_fluxes,
        initial_transforms=initial_transforms(
            spec.states,
            {**scales, **measurements.initial_scale},
            spec.nonnegative if nonnegative_initial else (),
        ),
    )
