"""The zoo of reference systems with ground truth.

Each system is a YAML file beside this module with the ground-truth spec (``truth``), the prior
knowledge a user would bring (``known``, a spec with neural slots), the true form of what the
networks must learn (``missing``) and a default ``scenario`` (initial states, sampling, noise,
observed species). ``solver`` names the ODE method a modeller would pick from the known rates
(``rodas5p`` where fast and slow rates mix, e.g. Michaelis-Menten terms with a tiny K).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import sympy as sp
import yaml

from ude.errors import UdeError
from ude.spec.expressions import parse_expression
from ude.spec.model_spec import ModelSpec
from ude.systems.network import network_names, network_raw, network_size

_HERE = Path(__file__).parent


@dataclass(frozen=True)
class Scenario:
    """How data are generated: initial states ``(condition, state)``, sampling and noise.
    ``known_initial``: the latent states whose initial values the experimenter sets and the
    data carry (a conditions table's ``init_<state>`` columns), e.g. an assay's enzyme."""

    initial: list[list[float]]
    t_end: float
    n_times: int
    noise: float
    observed: list[str]
    inputs: list[list[float]] = field(default_factory=list)
    t_start: float = 0.0
    known_initial: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class System:
    """A zoo entry: ground truth, prior knowledge, the missing terms and a default scenario."""

    name: str
    description: str
    truth: ModelSpec
    known: ModelSpec
    missing: dict[str, sp.Expr]
    scenario: Scenario
    solver: str = "dopri5"


def system_names() -> list[str]:
    """The YAML entries beside this module and the generated networks (``network.py``)."""
    return sorted([*(p.stem for p in _HERE.glob("*.yaml")), *network_names()])


@cache
def get_system(name: str) -> System:
    """The zoo system ``name`` (see :func:`system_names`)."""
    path = _HERE / f"{name}.yaml"
    if network_size(name):
        raw: dict[str, Any] = network_raw(name)
        source = str(_HERE / "network.py")
    elif path.is_file():
        raw = yaml.safe_load(path.read_text())
        source = str(path)
    else:
        raise UdeError(
            f"unknown system '{name}'",
            source="model.spec",
            fix="zoo systems: " + ", ".join(system_names()),
        )
    truth = ModelSpec.from_dict(raw["truth"], source=source)
    known = ModelSpec.from_dict(raw["known"], source=source)
    truth.name = known.name = raw["name"]
    missing = {
        s: parse_expression(e, truth.symbols, source=source, where=f"missing.{s}")
        for s, e in raw.get("missing", {}).items()
    }
    sc = raw["scenario"]
    scenario = Scenario(
        initial=[list(map(float, x)) for x in sc["initial"]],
        t_end=float(sc["t_end"]),
        n_times=int(sc["n_times"]),
        noise=float(sc["noise"]),
        observed=list(sc["observed"]),
        inputs=[list(map(float, u)) for u in sc.get("inputs", [])],
        t_start=float(sc.get("t_start", 0.0)),
        known_initial=list(sc.get("known_initial", [])),
    )
    unknown = [s for s in scenario.known_initial if s not in truth.states]
    if unknown:
        raise UdeError(
            f"{', '.join(unknown)} is not a state of the system",
            source=source,
            where="scenario.known_initial",
            fix="name states of " + ", ".join(truth.states),
        )
    return System(
        name=raw["name"],
        description=raw.get("description", "").strip(),
        truth=truth,
        known=known,
        missing=missing,
        scenario=scenario,
        solver=str(raw.get("solver", "dopri5")),
    )
