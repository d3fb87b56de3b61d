"""Scenarios: one point on the benchmark's axes, and the problem it poses to a method.

A scenario fixes a zoo system and every axis: noise (a fraction of each species' range),
time points, replicates, conditions, the fraction of species left unobserved, a corruption of
the prior knowledge, the candidate library and the seed. :func:`build_problem` turns it into the
data a method sees and the truth it is scored against.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import sympy as sp

from ude.benchmark.libraries import LIBRARIES
from ude.data.measurements import Measurements
from ude.data.synthetic import simulate_measurements
from ude.errors import UdeError
from ude.spec.model_spec import ModelSpec, Parameter
from ude.spec.simulate import simulate_spec
from ude.systems import System, get_system, system_names

CORRUPTIONS = ("none", "constant", "form")
# Extra conditions and the forecast's new initial state come from these fixed streams, the same
# for every method and seed, so cells differ only in what their axes say.
_CONDITION_SEED = 1000
_FORECAST_SEED = 2000
FORECAST_SPAN = 2.0
"""The forecast runs from a new initial state over this many training windows."""


@dataclass(frozen=True)
class Scenario:
    """One point on the benchmark's axes (see the module docstring)."""

    system: str
    noise: float = 0.05
    n_times: int | None = None
    replicates: int = 1
    conditions: int = 1
    unobserved: float = 0.0
    corruption: str = "none"
    library: str = "default"
    seed: int = 0

    def key(self) -> str:
        """A stable id of the scenario (same values, same id)."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def validate(self) -> None:
        """Raise :class:`UdeError` naming the axis whose value is out of range."""
        checks = [
            (self.system in system_names(), "system", ", ".join(system_names())),
            (0 <= self.noise < 1, "noise", "a fraction of the range in [0, 1), e.g. 0.05"),
            (self.n_times is None or self.n_times >= 5, "n_times", "an integer >= 5"),
            (self.replicates >= 1, "replicates", "an integer >= 1"),
            (self.conditions >= 1, "conditions", "an integer >= 1"),
            (0 <= self.unobserved < 1, "unobserved", "a fraction in [0, 1)"),
            (self.corruption in CORRUPTIONS, "corruption", ", ".join(CORRUPTIONS)),
            (self.library in LIBRARIES, "library", ", ".join(LIBRARIES)),
        ]
        for ok, where, fix in checks:
            if not ok:
                raise UdeError(
                    f"{where}={getattr(self, where)!r} is not allowed",
                    source="benchmark",
                    where=where,
                    fix=fix,
                )


@dataclass
class Problem:
    """What a method is given and what it is scored against.

    ``measurements``: the noisy data; ``known``: the prior knowledge (a spec with neural slots,
    possibly corrupted) for methods that use it; ``library``: the library name;
    ``forecast_initial (state,)`` and ``forecast_times (time,)``: the forecast task (all states of
    the truth, in its order); ``truth``: the true spec; ``observed``: the measured states;
    ``solver``: the ODE method the system's modeller chose from the known rates (dopri5, or
    rodas5p for stiff systems).
    """

    scenario: Scenario
    measurements: Measurements
    known: ModelSpec
    truth: ModelSpec
    observed: list[str]
    library: str
    forecast_initial: np.ndarray
    forecast_times: np.ndarray
    info: dict = field(default_factory=dict)
    solver: str = "dopri5"

    def true_forecast(self) -> np.ndarray:
        """True states ``(time, state)`` of the forecast task."""
        return simulate_spec(self.truth, self.forecast_initial[None], self.forecast_times)[0]


def initial_states(system: System, n: int) -> np.ndarray:
    """``(n, state)`` initial states: the system's own conditions first, then its first one
    scaled state by state by log-normal factors (sd 0.3) from a fixed stream."""
    own = np.array(system.scenario.initial, dtype=float)
    if n <= len(own):
        return own[:n]
    rng = np.random.default_rng(_CONDITION_SEED)
    extra = own[0] * np.exp(0.3 * rng.standard_normal((n - len(own), own.shape[1])))
    return np.concatenate([own, extra])


def observed_states(system: System, fraction: float) -> list[str]:
    """The observed states when ``fraction`` of all states are hidden: the system's default
    latent states first, then states from the end of the state vector; one stays observed."""
    states = system.truth.states
    default = [s for s in states if s in system.scenario.observed]
    n_hide = max(len(states) - len(default), round(fraction * len(states)))
    n_hide = min(n_hide, len(states) - 1)
    hidden = [s for s in states if s not in default]
    for s in reversed(default):
        if len(hidden) >= n_hide:
            break
        hidden.append(s)
    return [s for s in states if s not in hidden]


def corrupt(known: ModelSpec, kind: str) -> tuple[ModelSpec, str]:
    """``known`` with one known term wrong, and a note saying which.

    ``constant``: the first fixed parameter used in a known equation, times 1.5. ``form``: in
    the first state with a known equation, its own state ``s`` replaced by ``s/(1 + s)``.
    """
    if kind == "none":
        return known, ""
    used = set().union(*(e.free_symbols for e in known.equations.values()))
    if kind == "constant":
        for name, p in known.parameters.items():
            if sp.Symbol(name) in used and not p.learn and p.value != 0:
                params = dict(known.parameters)
                params[name] = Parameter(p.value * 1.5)
                spec = ModelSpec(**{**known.__dict__, "parameters": params})
                return spec, f"{name}: {p.value:g} -> {p.value * 1.5:g}"
    if kind == "form":
        for s, expr in known.equations.items():
            x = sp.Symbol(s)
            if x in expr.free_symbols:
                eqs = dict(known.equations)
                eqs[s] = expr.xreplace({x: x / (1 + x)})
                spec = ModelSpec(**{**known.__dict__, "equations": eqs})
                return spec, f"d{s}/dt: {expr} -> {eqs[s]}"
    return known, f"no known term to corrupt ({kind})"


def build_problem(scenario: Scenario) -> Problem:
    """The data, prior knowledge, truth and forecast task of ``scenario``."""
    scenario.validate()
    system = get_system(scenario.system)
    initial = initial_states(system, scenario.conditions)
    observed = observed_states(system, scenario.unobserved)
    data = simulate_measurements(
        scenario.system,
        noise=scenario.noise,
        n_times=scenario.n_times,
        initial=initial.tolist(),
        replicates=scenario.replicates,
        noise_scale="range",
        observed=observed,
        seed=scenario.seed,
    )
    known, note = corrupt(system.known, scenario.corruption)
    rng = np.random.default_rng(_FORECAST_SEED)
    new = initial[0] * np.exp(0.2 * rng.standard_normal(initial.shape[1]))
    t0, t1 = float(data.times[0]), float(data.times[-1])
    times = np.linspace(t0, t0 + FORECAST_SPAN * (t1 - t0), 201)
    return Problem(
        scenario=scenario,
        measurements=data,
        known=known,
        truth=system.truth,
        observed=observed,
        library=scenario.library,
        forecast_initial=new,
        forecast_times=times,
        info={"corruption": note} if note else {},
        solver=system.solver,
    )
