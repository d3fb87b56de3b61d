"""Generated reaction networks of any size with a known structure: the zoo's dimension axis.

``network<n>`` (e.g. ``network20``, ``network50``) is a metabolic pathway of ``n`` species
``X1..Xn``, built deterministically from ``n``:

- a constant inflow into ``X1`` and a first-order sink of every species;
- a chain of Michaelis-Menten conversions ``X_i -> X_(i+1)`` with ``V_i`` and ``K_i`` spread
  over an order of magnitude (small ``K`` make it stiff, as in real pathways);
- every fourth species binds the next-but-one reversibly by mass action,
  ``X_i + X_(i+2) <-> X_(i+3)``: bimolecular terms couple the chain across.

The prior knowledge is every reaction but one: the conversion in the middle of the chain is a
neural reaction (its rate law is left to a network that sees all species), as in the SEIR and
enzyme entries.
"""

from __future__ import annotations

import re

import numpy as np

PATTERN = re.compile(r"^network(\d+)$")
SIZES = (20, 50)  # the sizes listed among the zoo's systems (any n >= 4 can be built)


def network_names() -> list[str]:
    return [f"network{n}" for n in SIZES]


def network_size(name: str) -> int | None:
    """``n`` of a ``network<n>`` name (n >= 4), else None."""
    match = PATTERN.match(name)
    return int(match.group(1)) if match and int(match.group(1)) >= 4 else None


def network_specs(n: int) -> tuple[dict, dict, dict[str, str], list[float]]:
    """The truth and known spec dicts, the missing terms and the initial state of
    ``network<n>``."""
    rng = np.random.default_rng(n)
    species = [f"X{i}" for i in range(1, n + 1)]
    params: dict[str, float] = {"vin": 1.0}
    reactions = ["inflow: 0 -> X1; vin"]
    middle = n // 2
    neural = ""
    for i in range(1, n):
        v, k = (float(np.round(x, 3)) for x in (rng.uniform(0.8, 3.0), 10 ** rng.uniform(-2, 0)))
        params |= {f"V{i}": v, f"K{i}": k}
        rate = f"V{i}*X{i}/(K{i} + X{i})"
        reactions.append(f"c{i}: X{i} -> X{i + 1}; {rate}")
        if i == middle:
            neural = rate
    for i in range(1, n - 2, 4):
        kf, kr = (
            float(np.round(rng.uniform(0.5, 2.0), 3)),
            float(np.round(rng.uniform(0.1, 0.5), 3)),
        )
        params |= {f"kf{i}": kf, f"kr{i}": kr}
        reactions.append(f"b{i}: X{i} + X{i + 2} <-> X{i + 3}; kf{i}*X{i}*X{i + 2}, kr{i}*X{i + 3}")
    for i in range(1, n + 1):
        params[f"kd{i}"] = float(np.round(rng.uniform(0.05, 0.2), 3))
        reactions.append(f"d{i}: X{i} -> 0; kd{i}*X{i}")
    truth = {"states": species, "parameters": params, "reactions": reactions}
    known_reactions = [
        f"c{middle}: X{middle} -> X{middle + 1}; neural" if r.startswith(f"c{middle}:") else r
        for r in reactions
    ]
    known_params = {k: v for k, v in params.items() if k not in (f"V{middle}", f"K{middle}")}
    known = {"states": species, "parameters": known_params, "reactions": known_reactions}
    missing = {f"X{middle}": f"-{neural}", f"X{middle + 1}": neural}
    initial = [float(np.round(x, 3)) for x in rng.uniform(0.2, 1.0, n)]
    return truth, known, missing, initial


def network_raw(name: str) -> dict:
    """``network<n>`` in the form of a zoo YAML file (truth, known, missing, scenario)."""
    n = network_size(name)
    truth, known, missing, initial = network_specs(n)
    return {
        "name": name,
        "description": (
            f"A generated pathway of {n} species: inflow, Michaelis-Menten chain, mass-action "
            "binding every fourth species, first-order sinks; the middle conversion's rate law "
            "is left to a network (ude/systems/network.py)."
        ),
        "solver": "rodas5p",
        "truth": truth,
        "known": known,
        "missing": missing,
        "scenario": {
            "initial": [initial],
            "t_end": 10.0,
            "n_times": 31,
            "noise": 0.05,
            "observed": list(truth["states"]),
        },
    }
