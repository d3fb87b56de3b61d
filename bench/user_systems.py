"""Three kinds of user systems for ``bench/recovery.py``: the rate laws biologists bring.

Each kind is what a new user would write: a spec file that names the known terms and the neural
slot (nothing about a library), a CSV of noisy measurements and a conditions table, run with
``python train.py data=csv data.path=... data.conditions=... model.spec=...``.

* ``hill_repression``: negative autoregulation of a gene, mRNA ``m`` repressed by its protein
  ``p`` with a Hill law of coefficient 4, ``m' = a/(1 + (p/K)^4) - dm m``; two inductions (from
  no protein, a damped oscillation, and from a high level), both species measured.
* ``dose_response``: an indirect-response drug effect of Michaelis-Menten form,
  ``R' = kin - kout R - Vmax D/(K + D)``, four doses, the drug level ``D`` never measured (its
  initial level, the dose, in the conditions table), a quarter of the response samples missing.
* ``latent_infection``: mass-action infection ``S -> I`` at rate ``beta S I`` with the
  susceptible pool ``S`` never measured (its initial fraction known), two outbreaks of different
  initial size; the infection is a neural reaction (its stoichiometry known, its rate law not).

Noise is Gaussian with a standard deviation of ``noise`` times each series' mean (per condition
and observable), as in :func:`ude.data.simulate_measurements`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sympy as sp
import yaml

from ude.data import Measurements
from ude.data.measurements import Truth
from ude.data.tables import write_conditions, write_long
from ude.spec import ModelSpec, simulate_spec


@dataclass(frozen=True)
class UserSystem:
    """A user system: the truth, the user's spec, the experiment and what is scored.

    ``truth``/``spec``: spec dicts (the truth's parameters are numbers); ``initial``: the
    conditions' initial states (truth's state order); ``known_initial``: states whose initial
    values the conditions table gives; ``missing``: fraction of samples removed at random;
    ``target``: the state whose discovered term is scored against ``term`` (over the truth's
    states and parameters); ``constants``: the true rate-law constants (K, n) by name.
    """

    name: str
    truth: dict
    spec: dict
    initial: list[list[float]]
    observed: list[str]
    t_end: float
    n_times: int
    target: str
    term: str
    known_initial: list[str] = field(default_factory=list)
    missing: float = 0.0
    constants: dict[str, float] = field(default_factory=dict)

    def constants_variable(self) -> list[str]:
        """The variable of the rate law whose constants are scored (the true term's state
        inside a denominator)."""
        expr = self.true_term()
        _, den = sp.fraction(sp.together(expr))
        return sorted(str(s) for s in den.free_symbols)

    def truth_spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.truth)

    def true_term(self) -> sp.Expr:
        """The true missing term of ``target`` with numbers for the parameters."""
        spec = self.truth_spec()
        expr = sp.sympify(self.term, locals={s: sp.Symbol(s) for s in spec.symbols})
        return expr.xreplace({sp.Symbol(k): p.value for k, p in spec.parameters.items()})


HILL = UserSystem(
    name="hill_repression",
    truth={
        "states": ["m", "p"],
        "parameters": {"a": 1.0, "K": 1.0, "n": 4, "dm": 0.2, "kp": 0.2, "dp": 0.1},
        "equations": {"m": "a/(1 + (p/K)**n) - dm*m", "p": "kp*m - dp*p"},
    },
    spec={
        "name": "autorepression",
        "states": ["m", "p"],
        "parameters": {"dm": 0.2, "kp": 0.2, "dp": 0.1},
        "equations": {"m": "-dm*m", "p": "kp*m - dp*p"},
        "neural": {"targets": ["m"]},
    },
    initial=[[0.0, 0.0], [0.0, 4.0]],
    observed=["m", "p"],
    t_end=40.0,
    n_times=41,
    target="m",
    term="a/(1 + (p/K)**n)",
    constants={"K": 1.0, "n": 4.0},
)

DOSE = UserSystem(
    name="dose_response",
    truth={
        "states": ["D", "R"],
        "parameters": {"kel": 0.3, "kin": 1.0, "kout": 0.2, "Vmax": 0.8, "K": 2.0},
        "equations": {"D": "-kel*D", "R": "kin - kout*R - Vmax*D/(K + D)"},
    },
    spec={
        "name": "dose_response",
        "states": ["D", "R"],
        "parameters": {"kel": 0.3, "kin": 1.0, "kout": 0.2},
        "equations": {"D": "-kel*D", "R": "kin - kout*R"},
        "neural": {"targets": ["R"], "inputs": ["D"]},
    },
    initial=[[1.0, 5.0], [3.0, 5.0], [10.0, 5.0], [30.0, 5.0]],
    known_initial=["D"],
    observed=["R"],
    t_end=24.0,
    n_times=25,
    missing=0.25,
    target="R",
    term="-Vmax*D/(K + D)",
    constants={"K": 2.0},
)

INFECTION = UserSystem(
    name="latent_infection",
    truth={
        "states": ["S", "I"],
        "parameters": {"beta": 0.5, "gamma": 0.2},
        "equations": {"S": "-beta*S*I", "I": "beta*S*I - gamma*I"},
    },
    spec={
        "name": "infection",
        "states": ["S", "I"],
        "parameters": {"gamma": 0.2},
        "equations": {"I": "-gamma*I"},
        "reactions": ["infection: S -> I; neural"],
    },
    initial=[[0.99, 0.01], [0.999, 0.001]],
    known_initial=["S"],
    observed=["I"],
    t_end=40.0,
    n_times=41,
    target="I",
    term="beta*S*I",
)

SYSTEMS = {s.name: s for s in (HILL, DOSE, INFECTION)}


def simulate(system: UserSystem, noise: float, seed: int) -> Measurements:
    """Noisy samples of ``system`` (missing ones NaN), with its truth attached."""
    spec = system.truth_spec()
    initial = np.array(system.initial, dtype=float)
    times = np.linspace(0.0, system.t_end, system.n_times)
    clean = simulate_spec(spec, initial, times)  # (condition, time, state)
    idx = [spec.states.index(o) for o in system.observed]
    clean = clean[..., idx]
    rng = np.random.default_rng(seed)
    scale = np.abs(clean).mean(axis=1, keepdims=True)
    values = clean + noise * scale * rng.standard_normal(clean.shape)
    if system.missing:
        drop = rng.random(values.shape) < system.missing
        drop[:, 0] = False  # the first sample of each series is kept
        values[drop] = np.nan
    names = [f"c{i}" for i in range(len(initial))]
    known = {s: initial[:, spec.states.index(s)] for s in system.known_initial}
    target = sp.Symbol(system.target)
    return Measurements(
        times=times,
        values=values[:, :, None, :],
        observables=list(system.observed),
        conditions=names,
        initial=known,
        truth=Truth(spec=spec, initial=initial, missing={system.target: system.true_term()}),
        source=f"user:{system.name}:{target}",
    )


def write_inputs(system: UserSystem, m: Measurements, out: Path) -> dict[str, Path]:
    """The user's files: ``model.yaml``, ``data.csv`` and (with known initial values)
    ``conditions.csv`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"spec": out / "model.yaml", "data": write_long(m, out / "data.csv")}
    paths["spec"].write_text(yaml.safe_dump(system.spec, sort_keys=False))
    if m.initial:
        paths["conditions"] = write_conditions(m, out / "conditions.csv")
    return paths


def true_states(system: UserSystem, t_end: float, n: int = 401) -> tuple[np.ndarray, np.ndarray]:
    """Times ``(time,)`` and the true states ``(condition, time, state)`` from each
    condition's initial state up to ``t_end``."""
    times = np.linspace(0.0, t_end, n)
    states = simulate_spec(system.truth_spec(), np.array(system.initial, float), times)
    return times, states
