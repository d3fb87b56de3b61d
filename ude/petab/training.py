"""A PEtab problem as ude's training inputs: a ModelSpec and Measurements.

``python train.py data=petab data.problem=problem.yaml`` trains on what this module builds, so
training, distillation and the benchmark run unchanged:

- the SBML model's states, reactions and rules; SBML time becomes a clock state ``time``
  (``d time/dt = 1``, starting at the experiments' start);
- estimated problem parameters are learned spec parameters with the table's bounds and scale;
  the others are fixed at their nominal values;
- each observable's formula and noise model, with the measurement table's placeholder values
  (an observable whose rows give different values becomes one observable per set of values:
  ude's observables are per experiment, not per row);
- model parameters that conditions set to numbers become per-condition inputs; initial values
  that depend on estimated parameters are learned per condition (from their nominal value; a
  value that is one estimated parameter, PEtab's ``init_`` convention, on that parameter's scale
  and within its bounds), the others are known;
- estimated parameters that nothing then depends on (those ``init_`` parameters, the rate
  constants of a reaction a network replaces) are left out: nothing would learn them.

What this cannot represent is one line naming the file, row and feature (exit 2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import sympy as sp
import torch

from ude.data.datamodule import ConditionsDataModule
from ude.data.measurements import Measurements
from ude.errors import UdeError
from ude.petab.problem import TIME, PetabProblem, load_problem
from ude.spec.model_spec import ModelSpec, NeuralSlot, Parameter, load_spec
from ude.spec.observation import NoiseModel
from ude.spec.reactions import Reaction


def is_petab_yaml(path: str | Path) -> bool:
    """Whether ``path`` is a PEtab problem file (a YAML with ``format_version``)."""
    import yaml

    p = Path(path)
    if p.suffix.lower() not in (".yaml", ".yml") or not p.is_file():
        return False
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(raw, dict) and "format_version" in raw


def _problem(problem: str | Path | PetabProblem) -> PetabProblem:
    return problem if isinstance(problem, PetabProblem) else load_problem(problem)


def _refuse_networks(p: PetabProblem) -> None:
    if p.networks:
        raise UdeError(
            "training the networks of a PEtab SciML problem is not supported yet",
            source=p.source,
            where="extensions.sciml",
            fix="evaluate it with python -m ude.petab check; to train, mark the unknown terms "
            "'neural' in a ude YAML with 'petab: problem.yaml'",
        )


def petab_spec(problem: str | Path | PetabProblem, neural: Iterable[str] = ()) -> ModelSpec:
    """The ModelSpec ude trains for ``problem`` (see the module docstring).

    ``neural``: species that get a per-state network (and reactions whose flux is learned).
    """
    p = _problem(problem)
    _refuse_networks(p)
    base = p.spec
    marked = set(neural)
    model_params = dict(base.parameters)
    # Parameters that conditions set differently become per-condition inputs.
    varying = sorted({k for e in p.experiments for k in e.changes if k in model_params})
    for k in varying:
        for e in p.experiments:
            value = e.changes.get(k)
            if value is not None and not value.is_number:
                raise UdeError(
                    f"condition '{e.id}' sets '{k}' to '{value}', an expression of estimated "
                    "parameters; ude's training takes per-condition values as numbers",
                    source=str(p.files["condition"][0]) if p.files.get("condition") else p.source,
                    where=f"condition {e.id}, target {k}",
                    fix="give a number per condition",
                )
    parameters: dict[str, Parameter] = {}
    for name, param in model_params.items():
        if name in varying:
            continue
        parameters[name] = _parameter(p, name, param.value)
    # Problem parameters used by observables and noise (offsets, scales, sigmas).
    observables, noise, _ = _observation(p)
    used = set().union(*(e.free_symbols for e in observables.values())) if observables else set()
    used |= set().union(*(n.sigma.free_symbols for n in noise.values())) if noise else set()
    for sym in sorted(used, key=str):
        name = str(sym)
        if name in parameters or name in base.states or name in varying or name == TIME:
            continue
        if name not in p.parameters:
            raise UdeError(f"'{name}' is not a parameter of the problem", source=p.source)
        parameters[name] = _parameter(p, name, p.parameters[name].nominal)
    states = list(base.states)
    equations = dict(base.equations)
    initial = dict(base.initial)
    if base.time is not None:
        states.append(TIME)
        equations[TIME] = sp.Integer(1)
        initial[TIME] = p.experiments[0].t0 if p.experiments else 0.0
    for s in marked:
        if s not in base.states and s not in {r.name for r in base.reactions}:
            raise UdeError(f"'{s}' is not a species or reaction of the model", source=p.source)
    reactions = [
        r
        if r.name not in marked
        else Reaction(r.name, r.reactants, r.products, None, None, r.reversible)
        for r in base.reactions
    ]
    neural = (
        [NeuralSlot("net", tuple(s for s in states if s in marked), tuple(states))]
        if any(s in marked for s in states)
        else []
    )
    from ude.spec.model_spec import reaction_slot

    slot = reaction_slot(reactions, states, varying, {n.name for n in neural})
    if slot is not None:
        neural.append(slot)
    spec = replace(
        base,
        states=states,
        parameters=parameters,
        inputs=varying,
        equations=equations,
        reactions=reactions,
        neural=neural,
        observables=observables,
        noise=noise,
        initial=initial,
        time=None,
        source=p.source,
    )
    return _without_unused(spec)


def _without_unused(spec: ModelSpec) -> ModelSpec:
    """``spec`` without the estimated parameters nothing in it depends on: an ``init_``
    parameter (its state's initial value is learned as one, per condition, on its scale: see
    :func:`petab_measurements`) or the rate constants of a reaction a network replaces. Left
    in, they would be listed and exported as learned while no gradient reaches them."""
    used: set[str] = set()
    expressions = [*spec.known_rhs(), *spec.observables.values()]
    expressions += [n.sigma for n in spec.noise.values()]
    for e in expressions:
        used |= {str(x) for x in e.free_symbols}
    kept = {k: v for k, v in spec.parameters.items() if not v.learn or k in used}
    return replace(spec, parameters=kept)


def _parameter(p: PetabProblem, name: str, default: float) -> Parameter:
    row = p.parameters.get(name)
    if row is None:
        return Parameter(value=float(default))
    if row.nominal is None:
        raise UdeError(f"'{name}' is an array parameter", source=p.source)
    lo = row.lower if math.isfinite(row.lower) else None
    hi = row.upper if math.isfinite(row.upper) else None
    if not row.estimate:
        return Parameter(value=row.nominal, scale=row.scale)
    return Parameter(value=row.nominal, learn=True, min=lo, max=hi, scale=row.scale)


def _observation(
    p: PetabProblem,
) -> tuple[dict[str, sp.Expr], dict[str, NoiseModel], list[str]]:
    """Observable formulas and noise models with the measurement table's placeholders filled
    in, and the observable of each measurement row. An observable whose rows give different
    placeholder values becomes one observable per set of values, ``<id>_1``, ``<id>_2``, ...
    (in order of first appearance): ude's observables are per experiment, not per row."""
    m = p.measurements
    observables, noise = {}, {}
    row_names = [""] * len(m.value)
    taken = set(p.observables) | set(p.spec.states) | set(p.spec.parameters)
    for k, (oid, o) in enumerate(p.observables.items()):
        rows = np.where(m.observable == k)[0]
        groups: dict[tuple, list[int]] = {}
        for r in rows:
            groups.setdefault((m.observable_parameters[r], m.noise_parameters[r]), []).append(r)
        for g, ((ops, nps), members) in enumerate(groups.items(), start=1):
            name = oid
            if len(groups) > 1:
                name = f"{oid}_{g}"
                while name in taken:
                    name += "_"
                taken.add(name)
            subs = {sp.Symbol(n): v for n, v in zip(o.placeholders, ops, strict=True)}
            subs.update({sp.Symbol(n): v for n, v in zip(o.noise_placeholders, nps, strict=True)})
            observables[name] = o.formula.xreplace(subs)
            noise[name] = NoiseModel(
                o.noise.sigma.xreplace(subs), o.noise.transformation, o.noise.distribution
            )
            for r in members:
                row_names[r] = name
    return observables, noise, row_names


def petab_measurements(
    problem: str | Path | PetabProblem, spec: ModelSpec | None = None
) -> Measurements:
    """The problem's measurements on one time grid (the union of its times and the start),
    one condition per experiment; known initial values and per-condition inputs."""
    p = _problem(problem)
    spec = petab_spec(p) if spec is None else spec
    m = p.measurements
    t0 = p.experiments[0].t0 if p.experiments else 0.0
    times = np.unique(np.concatenate([[t0], m.time]))
    observables, _, row_names = _observation(p)
    obs = list(observables)
    obs_col = {o: i for i, o in enumerate(obs)}
    n_e, n_t = len(p.experiments), len(times)
    keys = list(
        zip(m.experiment, np.searchsorted(times, m.time), map(obs_col.get, row_names), strict=True)
    )
    counts: dict = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    n_rep = max(counts.values(), default=1)
    values = np.full((n_e, n_t, n_rep, len(obs)), np.nan)
    seen: dict = {}
    for (e, t, o), y in zip(keys, m.value, strict=True):
        r = seen.get((e, t, o), 0)
        seen[(e, t, o)] = r + 1
        values[e, t, r, o] = y
    inputs = np.array(
        [
            [_number(e.changes.get(u, sp.Float(spec_value(p, u)))) for u in spec.inputs]
            for e in p.experiments
        ]
    ).reshape(n_e, len(spec.inputs))
    estimated = {q for q in p.estimated}
    initial: dict[str, np.ndarray] = {}
    initial_scale: dict[str, tuple[str, float | None, float | None]] = {}
    for s in spec.states:
        col = np.full(n_e, np.nan)
        learned = set()
        for i, e in enumerate(p.experiments):
            expr = e.changes.get(s, spec.initial_assignments.get(s))
            if expr is None:
                col[i] = spec.initial.get(s, 0.0)
            elif not ({str(x) for x in expr.free_symbols} & estimated):
                col[i] = _number(expr.xreplace(_fixed_values(p)))
            else:
                learned.add(_initial_scale(p, expr))
        initial[s] = col
        if len(learned) == 1 and None not in learned:
            initial_scale[s] = learned.pop()
    return Measurements(
        times=times,
        values=values,
        observables=obs,
        conditions=[e.id for e in p.experiments],
        input_names=list(spec.inputs),
        inputs=inputs,
        initial=initial,
        source=p.source,
        initial_scale=initial_scale,
    )


def _initial_scale(p: PetabProblem, expr: sp.Expr) -> tuple[str, float | None, float | None] | None:
    """The scale and bounds of the problem parameter that ``expr`` (a learned initial value)
    is, or None for an expression of parameters (learned on the linear scale)."""
    row = p.parameters.get(str(expr)) if isinstance(expr, sp.Symbol) else None
    if row is None:
        return None
    return (row.scale, row.lower, row.upper)


REFERENCE_QUANTILE = 0.9
"""A state's typical size in :func:`reference_scales`: this quantile of its absolute value over
the experiments and measurement times (a large initial transient does not set it)."""


REFERENCE_FLOOR = 1e-12
"""States whose size is below this fraction of the largest state's keep their default scale."""


def reference_scales(problem: str | Path | PetabProblem) -> dict[str, float]:
    """Typical sizes of the model's states, ``{state: size}``: the problem simulated at its
    nominal parameters (the published model, with the kinetic laws that ``neural_reactions``
    replace), :data:`REFERENCE_QUANTILE` of each state's absolute value. A network that
    replaces a reaction then sees its inputs, and makes its flux, on the scale the model works
    at rather than that of an initial value (the repressilator's TetR starts at 31 and
    oscillates between 0.001 and 0.02). Empty when the nominal parameters cannot be solved;
    states that stay below :data:`REFERENCE_FLOOR` of the largest size are left out (the
    reporter's mRNA, gone within a second)."""
    from ude.model.solver import SolverFailed
    from ude.petab.objective import PetabModel, ScipySolver

    model = PetabModel(_problem(problem), solver=ScipySolver(rtol=1e-6, atol=1e-9))
    try:
        with torch.no_grad():
            states, _ = model.simulate()
    except SolverFailed:  # a hint only: without it, initial values set the scales
        return {}
    size = np.quantile(np.abs(states.numpy()), REFERENCE_QUANTILE, axis=(0, 1))
    return {
        s: float(v)
        for s, v in zip(model.states, size, strict=True)
        if s != TIME and np.isfinite(v) and v > REFERENCE_FLOOR * np.nanmax(size)
    }


def spec_value(p: PetabProblem, name: str) -> float:
    return p.spec.parameters[name].value


def _fixed_values(p: PetabProblem) -> dict[sp.Symbol, float]:
    values = {sp.Symbol(n): q.value for n, q in p.spec.parameters.items()}
    values.update(
        {sp.Symbol(n): r.nominal for n, r in p.parameters.items() if r.nominal is not None}
    )
    return values


def _number(expr: sp.Expr) -> float:
    value = sp.sympify(expr)
    if not value.is_number:
        raise UdeError(f"'{value}' does not evaluate to a number")
    return float(value)


def petab_datamodule(
    problem: str | Path,
    spec: str | ModelSpec | None = None,
    batch_size: int | None = None,
    val_conditions: Sequence[str] | None = None,
    val_fraction: float | None = None,
    val_after: float | None = None,
    curriculum_epochs: int = 0,
    curriculum_start: float = 0.25,
) -> ConditionsDataModule:
    """A :class:`ConditionsDataModule` over a PEtab problem's measurements."""
    p = load_problem(problem)
    model_spec = load_spec(spec) if spec is not None else petab_spec(p)
    measurements = petab_measurements(p, model_spec)
    if any(slot.reactions for slot in model_spec.neural):
        measurements = replace(measurements, state_scale=reference_scales(p))
    return ConditionsDataModule(
        measurements,
        batch_size,
        val_conditions,
        val_fraction,
        val_after,
        curriculum_epochs,
        curriculum_start,
    )
