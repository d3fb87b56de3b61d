"""The twin as a symbolic ModelSpec: discovered terms with learnable coefficients, and its exports
(twin.json in the format of DESIGN.md, equations.md)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import sympy as sp
from sympy.printing.str import StrPrinter

from ude.errors import UdeError
from ude.spec.expressions import parse_expression
from ude.spec.model_spec import ModelSpec, Parameter, read_bounds


class Owner(NamedTuple):
    """What a twin parameter is: the coefficient (``constant`` None) or the named constant
    (e.g. ``K``, ``n``) of term ``index`` of ``target``; a coefficient's value times
    ``scale`` is the term's plain coefficient."""

    target: str
    index: int
    scale: float
    constant: str | None = None


def not_identified(report: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{target: {parameter: entry}}``: the parameters above the threshold of an
    identifiability report (:mod:`ude.distill.identifiability`)."""
    if not report or "targets" not in report:
        return {}
    out = {}
    for target, entry in report["targets"].items():
        bad = {
            n: p
            for n, p in entry["parameters"].items()
            if p["relative_error"] is None or p["relative_error"] >= report["threshold"]
        }
        if bad:
            out[target] = bad
    return out


def _relative(rel: float | None) -> str:
    return "∞" if rel is None else f"{rel:.2g}"


def _fresh(name: str, taken: set[str]) -> str:
    out, i = name, 1
    while out in taken:
        out = f"{name}_{i}"
        i += 1
    taken.add(out)
    return out


def twin_spec(
    spec: ModelSpec,
    terms: dict[str, list],
    coef: dict[str, np.ndarray],
    learn: bool = True,
    scales: dict[str, np.ndarray] | None = None,
    constants: dict[str, dict[int, dict[str, float]]] | None = None,
    bounds: dict[str, dict[int, dict[str, tuple[float, float]]]] | None = None,
    individual: dict[str, str] | None = None,
) -> tuple[ModelSpec, dict[str, Owner]]:
    """The twin of ``spec`` with ``sum_j coef[t][j] * terms[t][j]`` discovered for each target
    ``t``; coefficients (and the learnable constants of rational terms, ``K`` and a free Hill
    ``n``) become parameters ``c_<state>_<j>`` / ``K_<state>_<j>`` / ``n_<state>_<j>``,
    learned when ``learn``. ``constants[t][j]`` overrides term ``j``'s own constants (e.g.
    the values the screen fitted); ``bounds[t][j]`` keeps a learnable constant in a range
    (a free ``n``: :data:`HILL_N_BOUNDS` by default, ``K``: positive).

    With ``scales[t] (term,)`` a coefficient is written ``c * scale * term`` and the parameter
    ``c = coef / scale`` is of order one, which conditions the refit's optimiser.
    A target that is a neural reaction's flux enters each state it changes times the change
    (:meth:`ModelSpec.neural_routes`), with the same parameters. The coefficients of a target
    in ``individual`` (target: population, e.g. ``lognormal``) are individual: per condition,
    under that population distribution (:class:`ude.spec.Parameter`).
    Returns the spec and a map parameter name -> :class:`Owner`.
    """
    from ude.distill.library import HILL_N_BOUNDS

    individual = individual or {}
    taken = set(spec.symbols)
    params = dict(spec.parameters)
    routes = spec.neural_routes()
    discovered: dict[str, sp.Expr] = {}
    owner: dict[str, Owner] = {}
    for target, c in coef.items():
        total = sp.Integer(0)
        for j in np.flatnonzero(c):
            term = terms[target][j]
            subs = {}
            given = (constants or {}).get(target, {}).get(int(j), {})
            ranges = (bounds or {}).get(target, {}).get(int(j), {})
            for k, v in {**term.constants, **given}.items():
                if k in term.learnable and learn:
                    name = _fresh(f"{k}_{target}_{j}", taken)
                    if k in ranges or (term.law is not None and k == term.law.n):
                        lo, hi = ranges.get(k, HILL_N_BOUNDS)
                        v = min(max(float(v), lo), hi)
                        params[name] = Parameter(v, learn=True, min=lo, max=hi)
                    else:
                        params[name] = Parameter(float(v), learn=True, min=1e-6 * float(v))
                    owner[name] = Owner(target, int(j), 1.0, k)
                    subs[sp.Symbol(k)] = sp.Symbol(name)
                else:
                    subs[sp.Symbol(k)] = sp.Float(v) if not float(v).is_integer() else int(v)
            name = _fresh(f"c_{target}_{j}", taken)
            scale = 1.0 if scales is None else float(scales[target][j])
            params[name] = Parameter(float(c[j]) / scale, learn=learn)
            if target in individual:
                params[name] = replace(
                    params[name], per_condition=True, population=individual[target]
                )
            owner[name] = Owner(target, int(j), scale)
            factor = sp.Symbol(name) if scale == 1.0 else sp.Symbol(name) * sp.Float(scale)
            total = total + factor * term.expr.xreplace(subs)
        for state, change in routes[target].items():
            change = sp.Integer(int(change)) if float(change).is_integer() else sp.Float(change)
            discovered[state] = discovered.get(state, sp.Integer(0)) + change * total
    return spec.with_discovered(discovered, params), owner


def numeric_twin(
    twin: ModelSpec,
    values: dict[str, Any],
    keep_learn: bool = False,
    individual: dict[str, list[float]] | None = None,
    population: dict[str, dict[str, Any]] | None = None,
) -> ModelSpec:
    """``twin`` with the values of its parameters replaced by ``values`` (one number each;
    a list is a parameter's per-condition values, whose mean is then its value); every
    parameter fixed unless ``keep_learn``. ``individual``: per-condition values ``(condition,)``
    (a refit's); ``population``: a population parameter's median (mean) and spread
    (:meth:`ude.model.parameters.SpecParameters.population`), which become its value and
    spread. A parameter with per-condition values keeps them (``Parameter.values``), so each
    condition is simulated with its own."""
    individual, population = individual or {}, population or {}
    params = {}
    for k, p in twin.parameters.items():
        v = values.get(k, p.value)
        each = individual.get(k)
        if isinstance(v, list):
            each, v = v, float(np.mean(v))
        v, spread = float(v), p.spread
        if k in population:
            pop = population[k]
            v, spread = float(pop.get("median", pop.get("mean", v))), float(pop["spread"])
        elif p.population is None:
            if p.min is not None:
                v = max(v, p.min)
            if p.max is not None:
                v = min(v, p.max)
        each = None if each is None else tuple(float(x) for x in each)
        if keep_learn:
            params[k] = replace(p, value=v, spread=spread, values=each)
        elif each is not None:
            params[k] = Parameter(
                v, per_condition=True, population=p.population, spread=spread, values=each
            )
        else:
            params[k] = Parameter(v, learn=False)
    return twin.with_discovered(twin.discovered, params)


def individual(twin: ModelSpec) -> list[str]:
    """The parameters with a value per condition (``Parameter.values``): the twin's
    expressions keep them as symbols."""
    return [k for k, p in twin.parameters.items() if p.values is not None]


def for_conditions(twin: ModelSpec, rows: list[int | None]) -> ModelSpec:
    """``twin`` for other conditions: condition ``i`` takes the values of the twin's condition
    ``rows[i]``, or the typical value (a population's median) where that is None."""
    params = {
        k: p
        if p.values is None
        else replace(p, values=tuple(p.value if r is None else p.values[r] for r in rows))
        for k, p in twin.parameters.items()
    }
    return replace(twin, parameters=params)


def population_entry(p: Parameter) -> dict[str, Any]:
    """A population parameter as twin.json writes it: distribution, median (mean), spread."""
    centre = "median" if p.population == "lognormal" else "mean"
    return {"distribution": p.population, centre: p.value, "spread": p.spread}


def _substitute(expr: sp.Expr, spec: ModelSpec, digits: int) -> sp.Expr:
    subs = {
        sp.Symbol(k): sp.Float(p.value, digits)
        for k, p in spec.parameters.items()
        if p.values is None  # individual parameters stay symbols
    }
    out = sp.expand(expr.xreplace(subs))
    return out.xreplace({n: sp.Float(n, digits) for n in out.atoms(sp.Float)})


class _TwinPrinter(StrPrinter):
    """sympy's text, with ``abs`` as the spec grammar spells it (a Hill term's ``|x|``)."""

    def _print_Abs(self, expr: sp.Abs) -> str:
        return f"abs({self._print(expr.args[0])})"


def _text(expr: sp.Expr) -> str:
    """An expression as twin.json text: sympy and :func:`parse_expression` both read it."""
    return _TwinPrinter().doprint(expr)


def twin_to_dict(
    twin: ModelSpec,
    observed: list[str],
    known: ModelSpec,
    inclusion: dict[str, dict[str, float]] | None = None,
    digits: int = 6,
    conditions: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The twin.json content: expressions over state and input names with numeric
    coefficients. ``parameters`` lists the values of the prior spec's parameters; ``known``
    and ``observables`` are added so the file round-trips into a ModelSpec.

    Individual parameters (:func:`individual`) stay symbols in the expressions: ``individual``
    gives each one's typical value (a population's median or mean), ``population`` each
    population's distribution, median (mean) and spread, and every entry of ``conditions``
    (by name, in the order of the values; e.g. its ``initial`` states, ``inputs``, ``doses``)
    gets its own values as ``parameters``.
    """
    equations = {
        s: _text(_substitute(e, twin, digits))
        for s, e in zip(twin.states, twin.known_rhs(), strict=True)
    }
    discovered = {s: _text(_substitute(e, twin, digits)) for s, e in twin.discovered.items()}
    knownpart = {s: _text(_substitute(e, twin, digits)) for s, e in twin.equations.items()}
    out: dict[str, Any] = {
        "name": twin.name,
        "states": list(twin.states),
        "inputs": list(twin.inputs),
        "observed": list(observed),
        "parameters": {
            k: twin.parameters[k].value for k in known.parameters if k in twin.parameters
        },
        "equations": equations,
        "known": knownpart,
        "discovered": discovered,
    }
    if twin.observables:
        out["observables"] = {
            k: _text(_substitute(e, twin, digits)) for k, e in twin.observables.items()
        }
    if twin.bounds:
        out["bounds"] = {k: [lo, hi] for k, (lo, hi) in twin.bounds.items()}
    if inclusion is not None:
        out["inclusion_probability"] = inclusion
    names = individual(twin)
    if names:
        out["individual"] = {k: twin.parameters[k].value for k in names}
        out["population"] = {
            k: population_entry(twin.parameters[k])
            for k in names
            if twin.parameters[k].population is not None
        }
    if conditions is not None:
        out["conditions"] = {}
        for i, (name, entry) in enumerate(conditions.items()):
            own = {}
            for k in names:
                values = twin.parameters[k].values
                if len(values) != len(conditions):
                    raise ValueError(f"{k}: {len(values)} values, {len(conditions)} conditions")
                own[k] = values[i]
            out["conditions"][name] = {"parameters": own, **entry}
    return out


def twin_from_dict(raw: dict[str, Any], source: str = "twin.json") -> ModelSpec:
    """A symbolic ModelSpec (no parameters left) from twin.json content."""
    if not isinstance(raw, dict) or "states" not in raw or "equations" not in raw:
        raise UdeError(
            "expected a twin with 'states' and 'equations'",
            source=source,
            fix="give the twin.json written by a distillation run",
        )
    states = list(raw["states"])
    inputs = list(raw.get("inputs", []))
    parameters = _individual_parameters(raw, source)
    names = [*states, *inputs, *parameters]
    discovered = {
        s: parse_expression(e, names, source=source, where=f"discovered.{s}")
        for s, e in raw.get("discovered", {}).items()
    }
    if "known" in raw:
        equations = {
            s: parse_expression(e, names, source=source, where=f"known.{s}")
            for s, e in raw["known"].items()
        }
    else:  # the full right-hand side minus what was discovered
        equations = {
            s: parse_expression(e, names, source=source, where=f"equations.{s}")
            - discovered.get(s, 0)
            for s, e in raw["equations"].items()
        }
    observables = {
        k: parse_expression(e, names, source=source, where=f"observables.{k}")
        for k, e in raw.get("observables", {}).items()
    }
    for s in [*equations, *discovered]:
        if s not in states:
            raise UdeError(f"'{s}' is not a state", source=source, where="equations")
    return ModelSpec(
        states=states,
        parameters=parameters,
        inputs=inputs,
        equations=equations,
        discovered=discovered,
        observables=observables,
        name=str(raw.get("name", "twin")),
        source=source,
        bounds=read_bounds(raw.get("bounds"), states, source),
    )


def _individual_parameters(raw: dict[str, Any], source: str) -> dict[str, Parameter]:
    """The individual parameters of twin.json: typical value, population, and the values of
    its conditions (in their order)."""
    typical = raw.get("individual") or {}
    population = raw.get("population") or {}
    conditions = raw.get("conditions") or {}
    out = {}
    for k, value in typical.items():
        try:
            values = tuple(float(c["parameters"][k]) for c in conditions.values())
        except (KeyError, TypeError):
            raise UdeError(
                f"individual parameter '{k}' has no value for every condition",
                source=source,
                where="conditions",
                fix="give the twin.json written by ude",
            ) from None
        pop = population.get(k)
        out[k] = Parameter(
            float(value),
            per_condition=True,
            population=None if pop is None else pop["distribution"],
            spread=None if pop is None else float(pop["spread"]),
            values=values if conditions else None,
        )
    return out


def load_twin(path: str | Path) -> ModelSpec:
    """A twin.json file as a ModelSpec."""
    path = Path(path)
    if not path.is_file():
        raise UdeError("twin file not found", source=str(path), fix="run a distillation first")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UdeError(
            f"not valid JSON: {err.msg}", source=str(path), where=f"line {err.lineno}"
        ) from None
    return twin_from_dict(raw, source=str(path))


def individual_markdown(twin: ModelSpec, conditions: list[str], digits: int = 4) -> list[str]:
    """Markdown lines: the population of each individual parameter, and every condition's own
    values (none without individual parameters)."""
    names = individual(twin)
    if not names:
        return []
    fmt = lambda v: f"{v:.{digits}g}"  # noqa: E731
    lines = [
        "## Individual parameters",
        "",
        "Symbols in the equations above; each condition has its own value.",
        "",
        "| parameter | population | typical value | spread |",
        "|---|---|---|---|",
    ]
    for k in names:
        p = twin.parameters[k]
        kind = {"lognormal": "lognormal (median)", "normal": "normal (mean)"}.get(
            p.population, "none (mean of the conditions)"
        )
        spread = "" if p.spread is None else fmt(p.spread)
        if p.population == "lognormal" and p.spread is not None:
            spread += " (sd of the log)"
        lines.append(f"| ${sp.latex(sp.Symbol(k))}$ | {kind} | {fmt(p.value)} | {spread} |")
    lines.append("")
    if len(conditions) == len(twin.parameters[names[0]].values):
        head = " | ".join(f"${sp.latex(sp.Symbol(k))}$" for k in names)
        lines += [f"| condition | {head} |", "|---|" + "---|" * len(names)]
        for i, c in enumerate(conditions):
            row = " | ".join(fmt(twin.parameters[k].values[i]) for k in names)
            lines.append(f"| {c} | {row} |")
        lines.append("")
    return lines


def equations_markdown(
    twin: ModelSpec,
    known: ModelSpec,
    selection_rows: list[dict[str, Any]] | None = None,
    inclusion: dict[str, dict[str, float]] | None = None,
    digits: int = 4,
    ties: list[dict[str, Any]] | None = None,
    identifiability: dict[str, Any] | None = None,
    tie: float | None = None,
    conditions: list[str] | None = None,
) -> str:
    """The twin as Markdown with LaTeX: each equation with its known and discovered part, the
    individual parameters (population and each of ``conditions``), the structures the data do
    not tell apart from it (``ties``), the terms the data do not identify
    (``identifiability``), the selection path with evidence weights and the
    inclusion probabilities."""
    from ude.distill.selection import TIE  # (ude.distill imports this module)

    lines = [
        f"# Distilled twin: {twin.name}",
        "",
        "Known terms plain, discovered terms boxed; numbers are the refitted values.",
        "",
    ]
    for s, rhs_s in zip(twin.states, twin.known_rhs(), strict=True):
        found = twin.discovered.get(s, sp.Integer(0))
        k = _substitute(rhs_s - found, twin, digits)  # equations and known reactions' fluxes
        d = _substitute(found, twin, digits)
        rhs = sp.latex(k) if k != 0 else ""
        if d != 0:
            rhs += (" + " if rhs else "") + r"\boxed{" + sp.latex(d) + "}"
        lines += ["$$", rf"\frac{{d{sp.latex(sp.Symbol(s))}}}{{dt}} = {rhs or '0'}", "$$", ""]
    if ties:
        lines += [
            "## Structures the data do not tell apart",
            "",
            "These fit the data as well as the twin above (criterion within "
            f"{TIE if tie is None else tie:g} units); the data do not choose between them.",
            "",
            "| criterion difference | discovered |",
            "|---|---|",
        ]
        for r in ties:
            lines.append(
                f"| {r['criterion_difference']:+.1f} | "
                + "; ".join(f"d{t}: {e}" for t, e in r["terms"].items())
                + " |"
            )
        lines.append("")
    unidentified = not_identified(identifiability)
    if unidentified:
        lines += [
            "## Terms the data do not identify",
            "",
            "Relative standard errors from the Fisher information at the final refit; above "
            f"{identifiability['threshold']:g} the data do not pin the term down.",
            "",
            "| target | parameter | value | relative error |",
            "|---|---|---|---|",
        ]
        for target, params in unidentified.items():
            for name, p in params.items():
                lines.append(
                    f"| {target} | {name} | {p['value']:.4g} | {_relative(p['relative_error'])} |"
                )
        lines.append("")
    by_parsimony = (identifiability or {}).get("by_parsimony") or []
    if by_parsimony:
        lines += [
            "## Terms identified only by parsimony",
            "",
            "Each is identified alone, not beside a term the selection left out that fits the "
            "data as well and that the data do not exclude (relative errors from the Fisher "
            "information of the selection's refit with that term; ∞: unbounded): the "
            "preference for fewer terms, not the data, set that term to zero.",
            "",
            "| target | term | parameter | relative error alone | beside | with the term | "
            "its relative error | fit difference | criterion difference |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in by_parsimony:
            for name, p in r["parameters"].items():
                lines.append(
                    f"| {r['target']} | {p['term']} | {name} | {_relative(p['alone'])} | "
                    f"{r['term']} | {_relative(p['with'])} | "
                    f"{_relative(r['extra_relative_error'])} | {r['fit_difference']:+.1f} | "
                    f"{r['criterion_difference']:+.1f} |"
                )
        lines.append("")
    if selection_rows:
        lines += [
            "## Selection path",
            "",
            "| terms | trajectory NMSE | criterion | weight | chosen | discovered |",
            "|---|---|---|---|---|---|",
        ]
        for r in selection_rows:
            crit = r.get("criterion")
            nmse = r.get("trajectory_nmse")
            lines.append(
                f"| {r['n_terms']} | {'solve failed' if nmse is None else f'{nmse:.3g}'} | "
                f"{crit if crit is None else f'{crit:.1f}'} | {r.get('weight', math.nan):.2g} | "
                f"{'yes' if r.get('chosen') else ''} | "
                + "; ".join(f"d{t}: {e}" for t, e in r.get("terms", {}).items())
                + " |"
            )
        lines.append("")
    lines += individual_markdown(twin, conditions or [], digits)
    if inclusion:
        lines += [
            "## Bootstrap inclusion probabilities",
            "",
            "| state | term | probability |",
            "|---|---|---|",
        ]
        for s, terms in inclusion.items():
            for t, p in sorted(terms.items(), key=lambda kv: -kv[1]):
                term = parse_expression(t, twin.symbols, source="inclusion")
                lines.append(f"| {s} | ${sp.latex(term)}$ | {p:.2f} |")
        lines.append("")
    return "\n".join(lines)
