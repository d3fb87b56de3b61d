"""Writing PEtab: simulations and gradients of a check, and a twin as a PEtab problem."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import sympy as sp

from ude.data.measurements import Measurements
from ude.petab.problem import PetabProblem, petab_tables
from ude.spec.model_spec import ModelSpec


def write_simulations(problem: PetabProblem, values: np.ndarray, path: str | Path) -> Path:
    """The measurement table with a ``simulation`` column instead of ``measurement``
    (``values (row,)`` in the table's order)."""
    import petab

    df = problem.measurements.table.copy()
    df = df.rename(columns={"measurement": "simulation"})
    df["simulation"] = values
    with petab_tables():
        petab.write_simulation_df(df, path)
    return Path(path)


def write_gradient(mech: dict[str, float], nets: dict, path: str | Path) -> Path:
    """A TSV ``parameterId, value``: one row per estimated scalar parameter, then one per
    entry of each estimated network array, named ``net.layer.name[i,j,...]``."""
    rows = list(mech.items())
    for net_id, layers in nets.items():
        for layer, arrays in layers.items():
            for name, arr in arrays.items():
                for idx in np.ndindex(arr.shape):
                    key = f"{net_id}.{layer}.{name}[{','.join(map(str, idx))}]"
                    rows.append((key, float(arr[idx])))
    pd.DataFrame(rows, columns=["parameterId", "value"]).to_csv(path, sep="\t", index=False)
    return Path(path)


def write_petab(
    spec: ModelSpec,
    measurements: Measurements,
    out_dir: str | Path,
    *,
    initial: np.ndarray | None = None,
    noise: np.ndarray | None = None,
    parameters: dict[str, float] | None = None,
    per_condition: dict[str, list[float]] | None = None,
    learned_initial: np.ndarray | None = None,
) -> Path:
    """Write ``spec`` (a symbolic model: a twin, or a trained spec without networks) with its
    training data as a PEtab v1 problem in ``out_dir``; returns the problem's YAML.

    ``initial`` are the fitted initial states ``(condition, state)`` (default: the spec's),
    ``noise`` the learned noise level of each observable without a noise model of the spec
    ``(observable,)``, ``parameters`` the fitted values (default: the spec's). Per-condition
    inputs and initial states go in the conditions table; learned parameters are estimated
    (``estimate`` 1) from their fitted values, within their bounds, on their scale.
    ``per_condition`` gives a parameter's value in each condition ``(condition,)``: the
    conditions table sets it to a problem parameter ``<name>_<condition>`` of its own.

    ``learned_initial (condition, state)`` marks the initial values the run learned (default:
    those the measurements do not give, as a run learns them). Each becomes an estimated
    problem parameter ``init_<state>`` (``init_<state>_<condition>`` with several conditions)
    at its fitted value, which the conditions table's column ``<state>`` names, PEtab's way of
    making an initial value estimable; its scale and bounds are those it was learned on
    (``measurements.initial_scale``: an imported ``init_`` parameter's), else linear and
    unbounded, as ude learns it.
    """
    import petab

    from ude.spec.expressions import format_expression
    from ude.spec.sbml import write_sbml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    learned = (
        _unknown_initial(spec, measurements)
        if learned_initial is None
        else np.asarray(learned_initial, dtype=bool)
    )
    spec = _rename_clock(spec)
    values = {n: p.value for n, p in spec.parameters.items()}
    values.update(parameters or {})
    n_c = measurements.n_conditions
    start = (
        _given_initial(spec, measurements) if initial is None else np.asarray(initial, dtype=float)
    )
    # Initial states that differ between conditions are set by the conditions table; the
    # SBML holds the first condition's.
    # The observables live in the observable table only: as SBML assignment rules of the
    # same ids they would shadow model entities, which PEtab forbids.
    write_sbml(
        replace(spec, observables={}),
        out / "model.xml",
        initial={s: float(start[0, i]) for i, s in enumerate(spec.states)},
        inputs={u: float(measurements.inputs[0, j]) for j, u in enumerate(spec.inputs)},
        parameters={k: float(v) for k, v in values.items() if k in spec.parameters},
    )
    per_condition = per_condition or {}
    cond_ids = _condition_ids(measurements.conditions)
    own = {k: [f"{k}_{c}" for c in cond_ids] for k in per_condition}
    init_ids = _initial_ids(
        spec,
        measurements,
        learned,
        taken={*values, *spec.inputs, *(q for ids in own.values() for q in ids)},
    )
    varying = [
        i
        for i, _ in enumerate(spec.states)
        if learned[:, i].any() or not np.allclose(start[:, i], start[0, i])
    ]
    state_cells = {
        spec.states[i]: [
            init_ids[c, i] if learned[c, i] else float(start[c, i]) for c in range(n_c)
        ]
        for i in varying
    }
    renamed = cond_ids != list(measurements.conditions)
    conditions = pd.DataFrame(
        {
            "conditionId": cond_ids,
            **({"conditionName": list(measurements.conditions)} if renamed else {}),
            **{
                u: np.asarray(measurements.inputs, dtype=float)[:, j]
                for j, u in enumerate(spec.inputs)
            },
            **state_cells,
            **own,
        }
    )
    rows = []
    obs = measurements.observables
    # an observable named as a state (ude's default: the state measured) gets an id of its own
    entities = {*spec.states, *values, *spec.inputs, *(q for ids in own.values() for q in ids)}
    entities |= {q for q in init_ids.flat if q}
    ids = {}
    for name in obs:
        oid = _identifier(name)
        while oid in entities or oid in ids.values():
            oid += "_obs" if not oid.endswith("_obs") else "_"
        ids[name] = oid
    for c, cond in enumerate(cond_ids):
        for t, time in enumerate(measurements.times):
            for r in range(measurements.values.shape[2]):
                for o, name in enumerate(obs):
                    y = measurements.values[c, t, r, o]
                    if np.isfinite(y):
                        rows.append((ids[name], cond, float(y), float(time)))
    table = pd.DataFrame(
        rows, columns=["observableId", "simulationConditionId", "measurement", "time"]
    )
    noise_rows = []
    for o, name in enumerate(obs):
        formula = spec.observables.get(name, sp.Symbol(name))
        model = spec.noise.get(name)
        if model is not None:
            sigma, trans, dist = (
                format_expression(model.sigma),
                model.transformation,
                model.distribution,
            )
        else:
            level = 1.0 if noise is None else float(noise[o])
            sigma, trans, dist = repr(level), "lin", "normal"
        noise_rows.append((ids[name], format_expression(formula), sigma, trans, dist))
    observables = pd.DataFrame(
        noise_rows,
        columns=[
            "observableId",
            "observableFormula",
            "noiseFormula",
            "observableTransformation",
            "noiseDistribution",
        ],
    )
    params = []
    for name, p in spec.parameters.items():
        rows = (
            zip(own[name], per_condition[name], strict=True)
            if name in per_condition
            else [(name, values[name])]
        )
        for pid, value in rows:
            v = float(value)
            lo = p.min if p.min is not None else (-np.inf if p.scale == "lin" else v * 1e-3)
            hi = p.max if p.max is not None else (np.inf if p.scale == "lin" else v * 1e3)
            params.append((pid, p.scale, lo, hi, v, int(p.learn)))
    for (c, i), pid in np.ndenumerate(init_ids):
        if learned[c, i]:
            scale, lo, hi = measurements.initial_scale.get(spec.states[i], ("lin", None, None))
            lo = -np.inf if lo is None else lo
            hi = np.inf if hi is None else hi
            params.append((pid, scale, lo, hi, float(start[c, i]), 1))
    parameter_df = pd.DataFrame(
        params,
        columns=[
            "parameterId",
            "parameterScale",
            "lowerBound",
            "upperBound",
            "nominalValue",
            "estimate",
        ],
    )
    with petab_tables():
        petab.write_condition_df(conditions.set_index("conditionId"), out / "conditions.tsv")
        petab.write_measurement_df(table, out / "measurements.tsv")
        petab.write_observable_df(observables.set_index("observableId"), out / "observables.tsv")
        petab.write_parameter_df(parameter_df.set_index("parameterId"), out / "parameters.tsv")
    problem = {
        "format_version": 1,
        "parameter_file": "parameters.tsv",
        "problems": [
            {
                "sbml_files": ["model.xml"],
                "condition_files": ["conditions.tsv"],
                "measurement_files": ["measurements.tsv"],
                "observable_files": ["observables.tsv"],
            }
        ],
    }
    path = out / "problem.yaml"
    petab.yaml.write_yaml(problem, path)
    return path


def _given_initial(spec: ModelSpec, measurements: Measurements) -> np.ndarray:
    """``(condition, state)``: the measurements' initial values where they give them, else the
    spec's, else 0 (as ``ude.model.hybrid.build_hybrid`` starts)."""
    out = np.array([[spec.initial.get(s, 0.0) for s in spec.states]] * measurements.n_conditions)
    for i, s in enumerate(spec.states):
        given = np.asarray(measurements.initial.get(s, np.full(len(out), np.nan)), dtype=float)
        out[:, i] = np.where(np.isfinite(given), given, out[:, i])
    return out


def _unknown_initial(spec: ModelSpec, measurements: Measurements) -> np.ndarray:
    """``(condition, state)``: True where the measurements do not give the initial value
    (``ude.model.hybrid.build_hybrid`` learns those)."""
    out = np.ones((measurements.n_conditions, len(spec.states)), dtype=bool)
    for i, s in enumerate(spec.states):
        if s in measurements.initial:
            out[:, i] = ~np.isfinite(np.asarray(measurements.initial[s], dtype=float))
    return out


def _initial_ids(
    spec: ModelSpec, measurements: Measurements, learned: np.ndarray, taken: set[str]
) -> np.ndarray:
    """The problem parameter of each learned initial value ``(condition, state)`` (empty
    strings elsewhere): ``init_<state>``, with a ``_<condition>`` suffix when the state is
    learned in more than one condition; PEtab identifiers, none of them in ``taken``."""
    ids = np.full(learned.shape, "", dtype=object)
    taken = set(taken) | set(spec.states) | set(spec.parameters)
    for i, s in enumerate(spec.states):
        several = learned[:, i].sum() > 1
        for c, cond in enumerate(measurements.conditions):
            if not learned[c, i]:
                continue
            name = _identifier(f"init_{s}_{cond}" if several else f"init_{s}")
            while name in taken:
                name += "_"
            taken.add(name)
            ids[c, i] = name
    return ids


def _condition_ids(names: list[str]) -> list[str]:
    """The conditions' PEtab ids: each name as an identifier (:func:`_identifier`; a CSV's
    conditions may be named ``patient 1`` or ``2``), made unique where two names map to one."""
    ids: list[str] = []
    for name in names:
        cid = _identifier(str(name))
        while cid in ids:
            cid += "_"
        ids.append(cid)
    return ids


def _identifier(name: str) -> str:
    """``name`` as a PEtab identifier: letters, digits and underscores, not a digit first."""
    out = re.sub(r"\W", "_", name, flags=re.ASCII)
    return out if not out[:1].isdigit() else f"_{out}"


def _rename_clock(spec: ModelSpec) -> ModelSpec:
    """A clock state named ``time`` (PEtab's time, see ude.petab.training) becomes a state
    ``clock``: SBML reserves ``time`` for its own time symbol."""
    from ude.petab.problem import TIME

    if TIME not in spec.states:
        return spec
    taken = {*spec.states, *spec.parameters, *spec.inputs}
    name = "clock"
    while name in taken:
        name += "_"
    sub = {sp.Symbol(TIME): sp.Symbol(name)}
    return replace(
        spec,
        states=[name if s == TIME else s for s in spec.states],
        equations={(name if k == TIME else k): e.xreplace(sub) for k, e in spec.equations.items()},
        reactions=[
            replace(
                r,
                rate=r.rate.xreplace(sub) if r.rate is not None else None,
                reverse=r.reverse.xreplace(sub) if r.reverse is not None else None,
            )
            for r in spec.reactions
        ],
        observables={k: e.xreplace(sub) for k, e in spec.observables.items()},
        noise={k: replace(n, sigma=n.sigma.xreplace(sub)) for k, n in spec.noise.items()},
        initial={(name if k == TIME else k): v for k, v in spec.initial.items()},
    )


def write_run_petab(
    model, measurements: Measurements, run_dir: str | Path, out_dir: str | Path | None = None
) -> Path | None:
    """A finished run's twin as a PEtab problem in ``out_dir`` (default ``run_dir/petab``):
    the distilled twin (``twin.json``) when there is one, else the trained model when it has
    no networks; None (nothing written) for a model whose networks were not distilled.
    Per-condition parameters become one problem parameter per condition."""
    from ude.twin.symbolic import load_twin

    run_dir = Path(run_dir)
    trained = model.spec
    fitted = model.parameter_values()
    values = {k: v for k, v in fitted.items() if not isinstance(v, list)}
    per_condition = {k: list(v) for k, v in fitted.items() if isinstance(v, list)}
    numbers = {sp.Symbol(k): v for k, v in values.items()}
    noise = {
        k: type(n)(n.sigma.xreplace(numbers), n.transformation, n.distribution)
        for k, n in trained.noise.items()
    }
    twin_file = run_dir / "twin.json"
    if twin_file.is_file():
        twin = load_twin(twin_file)
        spec = ModelSpec(
            states=twin.states,
            inputs=twin.inputs,
            equations={s: e for s, e in zip(twin.states, twin.known_rhs(), strict=True) if e != 0},
            observables=twin.observables,
            noise=noise,
            name=twin.name,
        )
        values, per_condition = {}, {}
    elif len(model.networks):
        return None
    else:
        spec = trained
    return write_petab(
        spec,
        measurements,
        run_dir / "petab" if out_dir is None else out_dir,
        initial=model.initial.detach().cpu().numpy(),
        noise=model.noise.detach().cpu().numpy(),
        parameters=values,
        per_condition=per_condition,
        learned_initial=learned_initial(model),
    )


def learned_initial(model) -> np.ndarray:
    """``(condition, state)``: True where ``model`` (a HybridODE) learned the initial value
    (learned initial states, less those the data give)."""
    from ude.model.initial_scale import initial_parameter

    known = model.initial_known.detach().cpu().numpy()
    return np.logical_and(initial_parameter(model).requires_grad, ~known)
