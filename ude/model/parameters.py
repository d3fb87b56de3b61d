"""Spec parameters as a module: fixed values, learned values kept in bounds, per condition."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ude.spec.model_spec import DEFAULT_SPREAD, Parameter, Prior

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
MIN_SPREAD = 1e-3
"""The smallest spread a population's MAP takes: with every condition at one value, the
joint density grows without bound as the spread shrinks (the mixed-effects MAP's degeneracy)."""


def _prior_nll(prior: Prior, value: torch.Tensor) -> torch.Tensor:
    """Elementwise negative log density of ``prior`` at ``value``."""
    if prior.dist == "normal":
        z = (value - prior.loc) / prior.scale
        return 0.5 * z * z + math.log(prior.scale) + _HALF_LOG_2PI
    # lognormal: density of the value itself, so the 1/value Jacobian is included.
    log_v = torch.log(value.clamp_min(torch.finfo(value.dtype).tiny))
    z = (log_v - math.log(prior.loc)) / prior.scale
    return 0.5 * z * z + log_v + math.log(prior.scale) + _HALF_LOG_2PI


def _log_view(p: Parameter) -> Parameter | None:
    """A log-scaled positive parameter seen on the log scale (its value and bounds), or None.

    Parameters estimated on a log scale (PEtab's ``log``/``log10``) span decades between their
    bounds; a logistic over the linear range would put a value near the lower bound within
    rounding of it, so they are learned as the log of the value.
    """
    if p.scale == "lin" or not p.value > 0 or (p.min is not None and p.min < 0):
        return None
    return Parameter(
        value=math.log(p.value),
        min=math.log(p.min) if p.min is not None and p.min > 0 else None,
        max=math.log(p.max) if p.max is not None and p.max > 0 else None,
    )


def _to_raw(p: Parameter) -> float:
    """Inverse of :func:`_from_raw` at the parameter's initial value."""
    log_view = _log_view(p)
    if log_view is not None:
        return _to_raw(log_view)
    if p.min is not None and p.max is not None:
        u = (p.value - p.min) / (p.max - p.min)
        u = min(max(u, 1e-6), 1 - 1e-6)
        return math.log(u / (1 - u))
    if p.min is not None:
        return math.log(max(p.value - p.min, 1e-12))
    if p.max is not None:
        return math.log(max(p.max - p.value, 1e-12))
    return p.value


def _from_raw(p: Parameter, raw: torch.Tensor) -> torch.Tensor:
    log_view = _log_view(p)
    if log_view is not None:
        return torch.exp(_from_raw(log_view, raw))
    # Bounded: logistic; one-sided: log-parameterised, so gradients act on the scale.
    if p.min is not None and p.max is not None:
        return p.min + (p.max - p.min) * torch.sigmoid(raw)
    if p.min is not None:
        return p.min + torch.exp(raw)
    if p.max is not None:
        return p.max - torch.exp(raw)
    return raw


class SpecParameters(nn.Module):
    """``forward(condition (batch,)) -> values (batch, n_parameters)`` in spec order.

    A learned parameter is held on an unbounded raw scale in ``learned`` (one entry per
    condition when ``per_condition``). A population parameter (:class:`Parameter`'s
    ``population``) holds its random effects ``eta (condition,)`` in ``learned``, its location in
    ``location`` (log of the median's magnitude for a lognormal population, the mean for a
    normal one) and the log of its spread in ``log_spread``. A fixed parameter with per-condition
    ``values`` (a fitted twin's) gives each condition its own value. Per-condition values
    (``Parameter.values``) also start the learned per-condition and population parameters.
    """

    def __init__(self, parameters: dict[str, Parameter], n_conditions: int):
        super().__init__()
        self.specs = dict(parameters)
        self.names = list(parameters)
        self.n_conditions = n_conditions
        self.learned = nn.ParameterDict()
        self.location = nn.ParameterDict()
        self.log_spread = nn.ParameterDict()
        self._sign: dict[str, float] = {}
        fixed, rows = [], {}
        for name, p in parameters.items():
            given = _condition_values(name, p, n_conditions)
            if p.learn and p.per_condition and p.population is not None:
                self._sign[name] = 1.0 if p.value > 0 else -1.0
                loc = math.log(abs(p.value)) if p.population == "lognormal" else p.value
                spread = p.spread or DEFAULT_SPREAD * (
                    1.0 if p.population == "lognormal" else max(abs(p.value), 1e-12)
                )
                self.location[name] = nn.Parameter(torch.tensor(loc))
                self.log_spread[name] = nn.Parameter(torch.tensor(math.log(spread)))
                eta = torch.zeros(n_conditions)
                if given is not None:
                    eta = torch.tensor([_eta(p, v, self._sign[name]) for v in given])
                self.learned[name] = nn.Parameter(eta)
            elif p.learn:
                if p.per_condition:
                    start = given if given is not None else [p.value] * n_conditions
                    raw = torch.tensor([_to_raw(_at(p, v)) for v in start])
                else:
                    raw = torch.tensor(_to_raw(p))
                self.learned[name] = nn.Parameter(raw)
            elif given is not None:
                rows[name] = given
            fixed.append(p.value)
        self.register_buffer("fixed", torch.tensor(fixed))
        # Not in the state dict: a twin's per-condition values come from its spec.
        self._rows = list(rows)
        self.register_buffer(
            "fixed_rows",
            torch.tensor([rows[k] for k in self._rows]).reshape(len(rows), n_conditions),
            persistent=False,
        )

    def value(self, name: str) -> torch.Tensor:
        """The values of learned parameter ``name``: a scalar, or ``(condition,)``."""
        p, raw = self.specs[name], self.learned[name]
        if name in self.location:
            if p.population == "lognormal":
                return self._sign[name] * torch.exp(self.location[name] + raw)
            return self.location[name] + raw
        return _from_raw(p, raw)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        cols = []
        for i, name in enumerate(self.names):
            if name in self.learned:
                value = self.value(name)
                value = value[condition] if value.dim() else value.expand(condition.shape)
            elif name in self._rows:
                value = self.fixed_rows[self._rows.index(name)][condition]
            else:
                value = self.fixed[i].expand(condition.shape)
            cols.append(value)
        if not cols:
            return self.fixed.new_zeros((condition.shape[0], 0))
        return torch.stack(cols, dim=-1)

    def prior_nll(self) -> torch.Tensor:
        """Negative log prior density of the learned parameters' values (0 without priors).

        A per-condition parameter's prior applies to each condition's value. A population
        parameter's random effects ``eta (condition,)`` add ``sum(eta^2) / (2 spread^2) +
        (N - 1) log(spread) + N log(2 pi) / 2`` over its ``N`` conditions: the population
        distribution as their prior, its median and spread learned with them (MAP, as the
        random effects of a nonlinear mixed-effects model). The spread's term counts ``N - 1``
        conditions: the median is estimated from the same values, so the spread's estimate is
        their unbiased sample variance (as in REML) rather than the smaller biased one. The
        spread counts as at least :data:`MIN_SPREAD`: below it, conditions that all share one
        value would make the density grow without bound.
        """
        total = self.fixed.new_zeros(())
        for name, raw in self.learned.items():
            if name in self.location:
                n = raw.numel()
                log_s = self.log_spread[name].clamp(min=self._log_floor(name))
                total = total + 0.5 * (raw * raw).sum() * torch.exp(-2 * log_s)
                total = total + (n - 1) * log_s + n * _HALF_LOG_2PI
                continue
            prior = self.specs[name].prior
            if prior is None:
                continue
            total = total + _prior_nll(prior, _from_raw(self.specs[name], raw)).sum()
        return total

    def values(self) -> dict[str, float | list[float]]:
        """Current values (a list per condition for per-condition parameters)."""
        out: dict[str, float | list[float]] = {}
        for i, name in enumerate(self.names):
            if name in self.learned:
                v = self.value(name).detach().cpu()
                out[name] = v.tolist() if v.dim() else float(v)
            elif name in self._rows:
                out[name] = self.fixed_rows[self._rows.index(name)].cpu().tolist()
            else:
                out[name] = float(self.fixed[i])
        return out

    def population(self) -> dict[str, dict[str, float | str]]:
        """Each population parameter's ``distribution``, ``median`` (lognormal) or ``mean``
        (normal), and ``spread`` (the standard deviation of its random effects: on the log
        scale for a lognormal population)."""
        out: dict[str, dict[str, float | str]] = {}
        for name, loc in self.location.items():
            dist, log_s = self.specs[name].population, self.log_spread[name]
            centre = float(loc.detach())
            if dist == "lognormal":
                centre = self._sign[name] * math.exp(centre)
            out[name] = {
                "distribution": dist,
                "median" if dist == "lognormal" else "mean": centre,
                "spread": math.exp(max(float(log_s.detach()), self._log_floor(name))),
            }
        return out

    def typical(self) -> dict[str, float]:
        """One value per parameter: a population's median (mean), the mean over the
        conditions of another per-condition parameter, else the value."""
        pop = self.population()
        out = {}
        for name, v in self.values().items():
            if name in pop:
                out[name] = float(pop[name].get("median", pop[name].get("mean")))
            else:
                out[name] = float(np.mean(v)) if isinstance(v, list) else v
        return out

    def _log_floor(self, name: str, min_spread: float = MIN_SPREAD) -> float:
        """The log of the smallest spread of population ``name`` (relative to the mean's
        magnitude for a normal population)."""
        scale = 1.0
        if self.specs[name].population != "lognormal":
            scale = abs(float(self.location[name].detach()))
        return math.log(max(min_spread * scale, 1e-12))

    @torch.no_grad()
    def centre_populations(self, min_spread: float = MIN_SPREAD) -> float:
        """Move each population to its MAP given the individual values, in place: the location
        to the mean of the (log) values, the spread to their standard deviation (``N - 1``; at
        least ``min_spread``, times the mean's magnitude for a normal population), the random
        effects re-centred so that every condition keeps its value. Only the prior changes,
        and it can only decrease. A gradient step does this slowly: the data fix each value,
        and moving the location and every random effect together is a direction the data do
        not see. Returns the largest change of a location or log spread."""
        change = 0.0
        for name, loc in self.location.items():
            eta = self.learned[name]
            n = eta.numel()
            shift = eta.mean()
            loc.add_(shift)
            eta.sub_(shift)
            change = max(change, abs(float(shift)))
            if n < 2:
                continue
            log_s = 0.5 * torch.log((eta * eta).sum() / (n - 1))
            log_s = log_s.clamp(min=self._log_floor(name, min_spread))
            if torch.isfinite(log_s):
                change = max(change, abs(float(log_s - self.log_spread[name])))
                self.log_spread[name].copy_(log_s)
        return change

    def select(self, idx: torch.Tensor) -> None:
        """Keep the conditions ``idx`` (indices, in their new order), in place."""
        with torch.no_grad():
            for name, p in self.learned.items():
                if p.dim():  # per condition
                    self.learned[name] = nn.Parameter(p[idx].clone(), p.requires_grad)
            self.fixed_rows = self.fixed_rows[:, idx].clone()
        self.n_conditions = len(idx)


def _at(p: Parameter, value: float) -> Parameter:
    return Parameter(value, p.learn, p.min, p.max, scale=p.scale)


def _eta(p: Parameter, value: float, sign: float) -> float:
    """The random effect of an individual ``value`` of population parameter ``p``."""
    if p.population == "lognormal":
        return math.log(max(value * sign, 1e-300) / abs(p.value))
    return value - p.value


def _condition_values(name: str, p: Parameter, n_conditions: int) -> list[float] | None:
    if p.values is None:
        return None
    if len(p.values) != n_conditions:
        raise ValueError(
            f"parameter {name} has {len(p.values)} per-condition values for {n_conditions} "
            "conditions"
        )
    return [float(v) for v in p.values]
