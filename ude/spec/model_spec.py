"""ModelSpec: the one language of ude for prior knowledge and for distilled twins.

A spec holds the states (in state-vector order), parameters (fixed or learned, with bounds),
per-condition inputs, the known terms of each right-hand side, the neural slots that learn what is
missing, the observables, and -- for a twin -- the symbolic terms discovered for each slot.
"""

from __future__ import annotations

import keyword
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import sympy as sp
import yaml

from ude.errors import UdeError
from ude.spec.expressions import FUNCTIONS, format_expression, parse_expression
from ude.spec.library_key import LibraryChoice, check_terms_reach_a_slot, parse_library
from ude.spec.observation import DISTRIBUTIONS, TRANSFORMATIONS, NoiseModel
from ude.spec.reactions import (
    Reaction,
    conservation_laws,
    parse_reaction,
    reaction_rhs,
    stoichiometry,
)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOP_KEYS = {
    "name",
    "description",
    "states",
    "parameters",
    "inputs",
    "equations",
    "neural",
    "observables",
    "discovered",
    "reactions",
    "initial",
    "sbml",
    "neural_reactions",
    "neural_inputs",
    "library",
    "noise",
    "nonnegative",
    "bounds",
    "petab",
}
# With 'sbml', the states, reactions and equations come from the SBML file.
_SBML_KEYS = {
    "name",
    "description",
    "sbml",
    "parameters",
    "neural",
    "neural_reactions",
    "neural_inputs",
    "observables",
    "initial",
    "library",
    "noise",
    "nonnegative",
    "bounds",
    "petab",
}
_PRIOR_KEYS = {"normal": ("mean", "sd"), "lognormal": ("median", "sigma")}
POPULATIONS = ("lognormal", "normal")
"""Distributions of a population parameter's individual values (:class:`Parameter`)."""
DEFAULT_SPREAD = 0.3
"""Starting spread of a population: 0.3 on the log scale (about 30 % between individuals) for
a lognormal one, 0.3 times the value for a normal one."""


@dataclass(frozen=True)
class Prior:
    """A prior on a learned parameter's value.

    ``normal``: mean ``loc``, standard deviation ``scale``. ``lognormal``: median ``loc``,
    standard deviation of the log ``scale``. Written ``{dist: normal, mean: 1, sd: 0.2}`` or
    ``{dist: lognormal, median: 1, sigma: 0.5}`` in a spec file.
    """

    dist: str
    loc: float
    scale: float

    def to_yaml(self) -> dict[str, Any]:
        loc, scale = _PRIOR_KEYS[self.dist]
        return {"dist": self.dist, loc: self.loc, scale: self.scale}


@dataclass(frozen=True)
class Parameter:
    """A parameter: ``value`` (initial value when learned), bounds ``[min, max]`` (None: open).

    ``scale`` (``lin``, ``log``, ``log10``) is the scale it is estimated and reported on
    (PEtab's parameterScale); it does not change the model.

    A ``per_condition`` parameter with a ``population`` (``lognormal`` or ``normal``) is
    individual, as in a nonlinear mixed-effects model: condition ``i`` has ``value * exp(eta_i)``
    (lognormal; ``value`` is the population median) or ``value + eta_i`` (normal; the mean),
    with ``eta_i ~ N(0, spread^2)``; the median (mean) and the ``spread`` are learned with the
    individual values (:class:`ude.model.parameters.SpecParameters`). ``values``: the fitted
    value of each condition, in the order of the conditions it was fitted on (a twin's; not
    part of the YAML format).
    """

    value: float
    learn: bool = False
    min: float | None = None
    max: float | None = None
    per_condition: bool = False
    prior: Prior | None = None
    scale: str = "lin"
    population: str | None = None
    spread: float | None = None
    values: tuple[float, ...] | None = None

    def to_yaml(self) -> float | dict[str, Any]:
        plain = (
            not self.learn and not self.per_condition and self.prior is None and self.scale == "lin"
        )
        if plain and self.min is None and self.max is None:
            return self.value
        out: dict[str, Any] = {"value": self.value, "learn": self.learn}
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        if self.per_condition:
            out["per_condition"] = True
        if self.prior is not None:
            out["prior"] = self.prior.to_yaml()
        if self.scale != "lin":
            out["scale"] = self.scale
        if self.population is not None:
            out["population"] = self.population
        if self.spread is not None:
            out["spread"] = self.spread
        return out


@dataclass(frozen=True)
class NeuralSlot:
    """A network that adds a learned term to each of ``targets``, seeing ``inputs``.

    A slot for neural reactions has ``reactions`` (their names) and ``stoichiometry``
    ``(target, reaction)``: the network outputs one flux per reaction and each target gets
    ``stoichiometry @ fluxes``. Otherwise the network outputs one term per target.
    """

    name: str
    targets: tuple[str, ...]
    inputs: tuple[str, ...]
    reactions: tuple[str, ...] = ()
    stoichiometry: tuple[tuple[float, ...], ...] | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        """What the network learns, by name: its reactions' fluxes, or its targets' terms."""
        return self.reactions if self.stoichiometry is not None else self.targets

    @property
    def n_outputs(self) -> int:
        return len(self.outputs)

    def routes(self) -> dict[str, dict[str, float]]:
        """Where each output goes: ``{output: {state: factor}}``, a flux through its
        stoichiometric changes, a state's own term onto that state with factor 1."""
        if self.stoichiometry is None:
            return {t: {t: 1.0} for t in self.targets}
        return {
            r: {
                s: row[j] for s, row in zip(self.targets, self.stoichiometry, strict=True) if row[j]
            }
            for j, r in enumerate(self.reactions)
        }


@dataclass
class ModelSpec:
    """States, parameters, inputs, known terms, neural slots and observables of a model.

    ``equations[s]`` is a known term of ds/dt; ``reactions`` add stoichiometry × flux (a
    neural reaction's flux is learned by the slot in ``neural`` that names it);
    ``discovered[s]`` is a symbolic term that replaces the neural term of ``s`` in a distilled
    twin. ``initial`` holds optional initial values (from the spec file or SBML);
    ``initial_assignments[s]`` an expression of parameters and inputs that gives the initial
    value of ``s`` (SBML initial assignments, PEtab conditions), ``initial[s]`` its value at the
    spec's parameter values. ``time`` names the time symbol when the right-hand side depends
    on time (SBML models read for PEtab); a spec without it is autonomous. ``noise[o]`` is the
    noise model of observable (or observed state) ``o``: a sigma expression, a transformation
    and a distribution; observables without one get the learned Gaussian noise. ``library``:
    the families and custom terms the distillation searches (:mod:`ude.spec.library_key`;
    None: the default). ``nonnegative``: states that are amounts (concentrations, fractions,
    populations) and never go below zero, so a distilled twin may not drive them there
    (:mod:`ude.distill.admissible`; a neural reaction's species are checked without it).
    ``bounds[s] = (lower, upper)``: the range a state's values lie in (a fraction's ``[0, 1]``);
    a state the data do not measure starts at its middle, and its learned initial values stay
    inside it (:func:`ude.model.hybrid.build_hybrid`). Expressions are sympy over the state,
    input and parameter names.
    """

    states: list[str]
    parameters: dict[str, Parameter] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    equations: dict[str, sp.Expr] = field(default_factory=dict)
    neural: list[NeuralSlot] = field(default_factory=list)
    observables: dict[str, sp.Expr] = field(default_factory=dict)
    discovered: dict[str, sp.Expr] = field(default_factory=dict)
    name: str = "model"
    source: str | None = None
    reactions: list[Reaction] = field(default_factory=list)
    initial: dict[str, float] = field(default_factory=dict)
    library: LibraryChoice | None = None
    initial_assignments: dict[str, sp.Expr] = field(default_factory=dict)
    time: str | None = None
    noise: dict[str, NoiseModel] = field(default_factory=dict)
    nonnegative: list[str] = field(default_factory=list)
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)

    # -- views ---------------------------------------------------------------------------------
    @property
    def parameter_names(self) -> list[str]:
        return list(self.parameters)

    @property
    def symbols(self) -> list[str]:
        """Names an expression may use, in the order of the compiled value vector."""
        return [*self.states, *self.inputs, *self.parameters]

    @property
    def neural_targets(self) -> list[str]:
        return [t for slot in self.neural for t in slot.targets]

    def neural_routes(self) -> dict[str, dict[str, float]]:
        """Every network output (a state's term or a neural reaction's flux) and the states it
        changes, with their factors (:meth:`NeuralSlot.routes`)."""
        return {k: v for slot in self.neural for k, v in slot.routes().items()}

    def known_rhs(self) -> list[sp.Expr]:
        """Known part of the right-hand side, one expression per state: ``equations`` terms
        + stoichiometry × flux of the known reactions + ``discovered`` terms."""
        fluxes = reaction_rhs(self.reactions, self.states)
        return [
            self.equations.get(s, sp.Integer(0))
            + fluxes.get(s, sp.Integer(0))
            + self.discovered.get(s, sp.Integer(0))
            for s in self.states
        ]

    def stoichiometry(self) -> sp.Matrix:
        """Stoichiometric matrix ``(state, reaction)`` of all reactions (neural ones too)."""
        return stoichiometry(self.reactions, self.states)

    def conservation_laws(self) -> list[dict[str, sp.Rational]]:
        """Moieties ``{state: weight}`` whose weighted sum the model keeps constant.

        From the left null space of the stoichiometric matrix; states with equation,
        discovered or per-state neural terms carry no weight (those terms may change them).
        """
        free = {*self.equations, *self.discovered}
        free |= {t for slot in self.neural if slot.stoichiometry is None for t in slot.targets}
        return conservation_laws(self.reactions, self.states, free)

    def with_discovered(
        self, discovered: dict[str, sp.Expr], parameters: dict[str, Parameter] | None = None
    ) -> ModelSpec:
        """The twin: this spec with its neural slots (and neural reactions) replaced by
        ``discovered`` terms."""
        return replace(
            self,
            neural=[],
            reactions=[r for r in self.reactions if not r.neural],
            discovered=dict(discovered),
            parameters=dict(parameters if parameters is not None else self.parameters),
        )

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A YAML/JSON-ready dict in the spec file format (expressions as strings)."""
        out: dict[str, Any] = {"name": self.name, "states": list(self.states)}
        if self.parameters:
            out["parameters"] = {k: p.to_yaml() for k, p in self.parameters.items()}
        if self.inputs:
            out["inputs"] = list(self.inputs)
        if self.equations:
            out["equations"] = {k: format_expression(v) for k, v in self.equations.items()}
        if self.reactions:
            out["reactions"] = [r.to_string(format_expression) for r in self.reactions]
        slots = [s for s in self.neural if s.stoichiometry is None]  # others come from reactions
        if slots:
            out["neural"] = [
                {"name": s.name, "targets": list(s.targets), "inputs": list(s.inputs)}
                for s in slots
            ]
        if self.observables:
            out["observables"] = {k: format_expression(v) for k, v in self.observables.items()}
        if self.discovered:
            out["discovered"] = {k: format_expression(v) for k, v in self.discovered.items()}
        if self.initial:
            out["initial"] = dict(self.initial)
        if self.library is not None:
            out["library"] = self.library.to_yaml()
        if self.noise:
            out["noise"] = {
                k: {
                    "sigma": format_expression(n.sigma),
                    "transformation": n.transformation,
                    "distribution": n.distribution,
                }
                for k, n in self.noise.items()
            }
        if self.nonnegative:
            out["nonnegative"] = list(self.nonnegative)
        if self.bounds:
            out["bounds"] = {k: [lo, hi] for k, (lo, hi) in self.bounds.items()}
        return out

    @classmethod
    def from_dict(cls, raw: Any, source: str | None = None) -> ModelSpec:
        """Build and validate a spec from the YAML format of DESIGN.md."""
        return _SpecReader(raw, source).read()


# PyYAML's context of an unfinished construct: what it is, in words, and the fix.
_YAML_CONTEXTS = {
    "while scanning a simple key": ("a key without ':'", "write 'key: value'"),
    "while parsing a flow sequence": ("a '[' list that is not closed", "close it with ']'"),
    "while parsing a flow mapping": ("a '{' mapping that is not closed", "close it with '}'"),
    "while scanning a quoted scalar": ("a quoted text that is not closed", "add the closing quote"),
}


def yaml_error(err: yaml.YAMLError, source: str) -> UdeError:
    """A YAML syntax error as a :class:`UdeError` on the line where the mistake is.

    PyYAML marks where it noticed the problem; for an unfinished construct (a key without
    ':', an unclosed bracket or quote) that is a later line, and the construct's start (its
    context mark) is where the mistake is.
    """
    mark = getattr(err, "problem_mark", None)
    context = getattr(err, "context", None) or ""
    message, fix = f"not valid YAML: {getattr(err, 'problem', None) or err}", None
    if context in _YAML_CONTEXTS:
        mark = getattr(err, "context_mark", None) or mark
        what, fix = _YAML_CONTEXTS[context]
        message = f"not valid YAML: {what}"
    elif "expected <block end>" in message:
        message = "not valid YAML: this line's indentation matches no level above it"
        fix = "indent it like the other keys at its level"
    where = f"line {mark.line + 1}" if mark is not None else None
    return UdeError(message, source=source, where=where, fix=fix)


def load_spec(spec: str | Path | ModelSpec) -> ModelSpec:
    """A ModelSpec from a YAML file, an SBML file, or the name of a zoo system."""
    if isinstance(spec, ModelSpec):
        return spec
    text = str(spec)
    path = Path(text)
    if path.suffix.lower() in {".yaml", ".yml"}:
        if not path.is_file():
            raise UdeError(
                "spec file not found",
                source=text,
                fix="give a YAML spec, an SBML file or a zoo system name",
            )
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise yaml_error(err, text) from None
        if isinstance(raw, dict) and "format_version" in raw:  # a PEtab problem
            from ude.petab.training import petab_spec  # optional reader, imported on use

            return petab_spec(path)
        spec_ = ModelSpec.from_dict(raw, source=text)
        if spec_.name == "model":
            spec_.name = path.stem
        return spec_
    if path.suffix.lower() in {".xml", ".sbml"}:
        from ude.spec import sbml  # optional reader, imported on use

        return sbml.read_sbml(path)
    from ude.systems import get_system, system_names

    if text in system_names():
        return get_system(text).known
    raise UdeError(
        f"unknown spec '{text}'",
        source="model.spec",
        fix="give a .yaml spec file, an .xml/.sbml file or one of the zoo systems: "
        + ", ".join(system_names()),
    )


def read_bounds(value: Any, states: list[str], source: str) -> dict[str, tuple[float, float]]:
    """A ``bounds`` mapping ``state: [lower, upper]`` read and checked as a spec's (a twin.json
    carries its spec's)."""
    return _SpecReader(None, source).bounds(value, states)


class _SpecReader:
    """Validates the raw YAML structure, naming the file and key of every problem."""

    def __init__(self, raw: Any, source: str | None):
        self.raw = raw
        self.source = source

    def fail(self, where: str, message: str, fix: str | None = None) -> UdeError:
        return UdeError(message, source=self.source or "spec", where=where, fix=fix)

    def read(self) -> ModelSpec:
        raw = self.raw
        if not isinstance(raw, dict):
            raise self.fail("top level", "expected a mapping with 'states' and 'equations'")
        unknown = set(raw) - _TOP_KEYS
        if unknown:
            raise self.fail(
                sorted(unknown)[0], "unknown key", "allowed keys: " + ", ".join(sorted(_TOP_KEYS))
            )
        if "sbml" in raw and "petab" in raw:
            raise self.fail("petab", "give either 'sbml' or 'petab', not both")
        if "sbml" in raw or "petab" in raw:
            return self.read_with_sbml(raw)
        for key in ("neural_reactions", "neural_inputs"):
            if key not in raw:
                continue
            raise self.fail(
                key,
                "only used with 'sbml'",
                "in a reaction list, give a learned flux the rate 'neural'",
            )
        states = self.names(raw.get("states"), "states", required=True)
        inputs = self.names(raw.get("inputs") or [], "inputs")
        parameters = self.parameters(raw.get("parameters") or {})
        declared = [*states, *inputs, *parameters]
        dupes = {n for n in declared if declared.count(n) > 1}
        if dupes:
            raise self.fail(
                sorted(dupes)[0],
                "declared twice (states, inputs and parameters share one namespace)",
            )
        equations = self.expressions(raw.get("equations") or {}, "equations", declared, states)
        discovered = self.expressions(raw.get("discovered") or {}, "discovered", declared, states)
        observables = self.expressions(raw.get("observables") or {}, "observables", declared)
        reactions = self.reactions(raw.get("reactions"), states, inputs, parameters)
        neural = self.neural(raw.get("neural"), states, inputs)
        flux_slot = reaction_slot(reactions, states, inputs, taken={s.name for s in neural})
        if flux_slot is not None:
            neural.append(flux_slot)
        initial = self.initial(raw.get("initial"), states)
        library = self.library(raw.get("library"), [*states, *inputs], neural)
        noise = self.noise(raw.get("noise"), declared, [*states, *observables])
        nonnegative = self.states_of(raw.get("nonnegative"), "nonnegative", states)
        bounds = self.bounds(raw.get("bounds"), states)
        name = raw.get("name", "model")
        if not isinstance(name, str):
            raise self.fail("name", "expected a string")
        return ModelSpec(
            states=states,
            parameters=parameters,
            inputs=inputs,
            equations=equations,
            neural=neural,
            observables=observables,
            discovered=discovered,
            name=name,
            source=self.source,
            reactions=reactions,
            initial=initial,
            library=library,
            noise=noise,
            nonnegative=nonnegative,
            bounds=bounds,
        )

    def library(
        self, value: Any, names: list[str], neural: list[NeuralSlot]
    ) -> LibraryChoice | None:
        choice = parse_library(value, names, source=self.source or "spec")
        slots = [(s.name, s.inputs) for s in neural]
        check_terms_reach_a_slot(choice, slots, names, source=self.source or "spec")
        return choice

    def read_with_sbml(self, raw: dict[str, Any]) -> ModelSpec:
        """An SBML model with the YAML's learned parameters, networks and observables on top."""
        from ude.spec.sbml import read_sbml

        key = "sbml" if "sbml" in raw else "petab"
        extra = set(raw) - _SBML_KEYS
        if extra:
            raise self.fail(
                sorted(extra)[0],
                f"not allowed with '{key}': states, reactions and equations come from the model",
                f"allowed with '{key}': " + ", ".join(sorted(_SBML_KEYS)),
            )
        if not isinstance(raw[key], str):
            raise self.fail(key, f"expected the path of an {key.upper()} file")
        path = Path(raw[key])
        if not path.is_absolute() and self.source:
            path = Path(self.source).parent / path
        marked = self.names(raw.get("neural_reactions") or [], "neural_reactions")
        if key == "sbml":
            base = read_sbml(path, neural=marked)
        else:
            from ude.petab.training import petab_spec  # optional reader, imported on use

            base = petab_spec(path, neural=marked)
        # Parameter entries update the SBML's: an entry without 'value' keeps the SBML value.
        entries = raw.get("parameters") or {}
        if not isinstance(entries, dict):
            raise self.fail("parameters", "expected a mapping name: value")
        merged: dict[str, Any] = {}
        for name, entry in entries.items():
            if name not in base.parameters:
                raise self.fail(
                    f"parameters.{name}",
                    f"'{name}' is not a parameter of {path.name}",
                    "parameters: " + ", ".join(base.parameters),
                )
            if isinstance(entry, dict) and "value" not in entry:
                entry = {**entry, "value": base.parameters[name].value}
            merged[name] = entry
        parameters = {**base.parameters, **self.parameters(merged)}
        declared = [*base.states, *base.inputs, *parameters]
        observables = {
            **base.observables,
            **self.expressions(raw.get("observables") or {}, "observables", declared),
        }
        neural = [
            *self.neural(raw.get("neural"), base.states, base.inputs),
            *self.reaction_inputs(raw.get("neural_inputs"), base),
        ]
        initial = {**base.initial, **self.initial(raw.get("initial"), base.states)}
        library = self.library(raw.get("library"), [*base.states, *base.inputs], neural)
        noise = {
            **base.noise,
            **self.noise(raw.get("noise"), declared, [*base.states, *observables]),
        }
        nonnegative = self.states_of(raw.get("nonnegative"), "nonnegative", base.states)
        bounds = self.bounds(raw.get("bounds"), base.states)
        name = raw.get("name", base.name)
        if not isinstance(name, str):
            raise self.fail("name", "expected a string")
        return replace(
            base,
            nonnegative=nonnegative,
            bounds=bounds,
            parameters=parameters,
            observables=observables,
            neural=neural,
            initial=initial,
            library=library,
            noise=noise,
            name=name,
            source=self.source,
        )

    def reaction_inputs(self, value: Any, base: ModelSpec) -> list[NeuralSlot]:
        """The SBML model's networks, the neural reactions' one seeing only ``value`` (the
        ``neural_inputs`` key: states and inputs) when given, else every state and input."""
        if value is None:
            return list(base.neural)
        where = "neural_inputs"
        names = self.names(value, where, required=True)
        seen = [*base.states, *base.inputs]
        for i, n in enumerate(names):
            if n not in seen:
                raise self.fail(
                    f"{where}[{i}]",
                    f"'{n}' is not a state or input of the model",
                    "networks see states and inputs: " + ", ".join(seen),
                )
        if not any(s.reactions for s in base.neural):
            raise self.fail(where, "no neural reactions", "list them in neural_reactions")
        return [replace(s, inputs=tuple(names)) if s.reactions else s for s in base.neural]

    def reactions(
        self,
        value: Any,
        states: list[str],
        inputs: list[str],
        parameters: dict[str, Parameter],
    ) -> list[Reaction]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail("reactions", "expected a list of reaction strings")
        out: list[Reaction] = []
        seen: set[str] = set()
        names = [*states, *inputs, *parameters]
        for i, text in enumerate(value):
            reaction = parse_reaction(
                text,
                i,
                species=states,
                boundary=[*inputs, *parameters],
                names=names,
                parameters=list(parameters),
                source=self.source or "spec",
                where=f"reactions[{i}]",
            )
            if reaction.name in seen:
                raise self.fail(f"reactions[{i}]", f"reaction name '{reaction.name}' is used twice")
            seen.add(reaction.name)
            out.append(reaction)
        return out

    def noise(self, value: Any, names: list[str], observed: list[str]) -> dict[str, NoiseModel]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail("noise", "expected a mapping observable: {sigma, transformation, ...}")
        out = {}
        for key, entry in value.items():
            where = f"noise.{key}"
            if key not in observed:
                raise self.fail(where, f"'{key}' is not a state or observable")
            if not isinstance(entry, dict) or "sigma" not in entry:
                raise self.fail(
                    where, "expected {sigma: expression[, transformation, distribution]}"
                )
            extra = set(entry) - {"sigma", "transformation", "distribution"}
            if extra:
                raise self.fail(f"{where}.{sorted(extra)[0]}", "unknown key")
            trans = entry.get("transformation", "lin")
            dist = entry.get("distribution", "normal")
            if trans not in TRANSFORMATIONS:
                raise self.fail(
                    f"{where}.transformation", f"'{trans}'", " or ".join(TRANSFORMATIONS)
                )
            if dist not in DISTRIBUTIONS:
                raise self.fail(f"{where}.distribution", f"'{dist}'", " or ".join(DISTRIBUTIONS))
            sigma = parse_expression(
                entry["sigma"], names, source=self.source or "spec", where=f"{where}.sigma"
            )
            out[key] = NoiseModel(sigma, trans, dist)
        return out

    def initial(self, value: Any, states: list[str]) -> dict[str, float]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail("initial", "expected a mapping state: value")
        out = {}
        for key, v in value.items():
            if key not in states:
                raise self.fail(
                    f"initial.{key}", f"'{key}' is not a state", "states: " + ", ".join(states)
                )
            out[key] = self.number(v, f"initial.{key}")
        return out

    def bounds(self, value: Any, states: list[str]) -> dict[str, tuple[float, float]]:
        """``value``: a mapping ``state: [lower, upper]`` (none: empty). An ``initial`` value
        outside its state's range is no error: a twin written back holds its measured states'
        fitted starts, which the range does not bound."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail("bounds", "expected a mapping state: [lower, upper]")
        out = {}
        for key, pair in value.items():
            where = f"bounds.{key}"
            if key not in states:
                raise self.fail(where, f"'{key}' is not a state", "states: " + ", ".join(states))
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise self.fail(where, "expected [lower, upper]", "e.g. [0, 1] for a fraction")
            lower, upper = (self.number(v, where) for v in pair)
            if not lower < upper:
                raise self.fail(where, f"[{lower}, {upper}] is not a range", "give lower < upper")
            out[key] = (lower, upper)
        return out

    def states_of(self, value: Any, where: str, states: list[str]) -> list[str]:
        """``value``: a list of the model's states (none: empty)."""
        out = self.names(value, where)
        for i, name in enumerate(out):
            if name not in states:
                raise self.fail(
                    f"{where}[{i}]", f"'{name}' is not a state", "states: " + ", ".join(states)
                )
        return out

    def names(self, value: Any, where: str, required: bool = False) -> list[str]:
        if value is None or value == []:
            if required:
                raise self.fail(where, "missing or empty", "list the names, e.g. [x, y]")
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list of names, got {type(value).__name__}")
        out = []
        for i, name in enumerate(value):
            self.check_name(name, f"{where}[{i}]")
            out.append(name)
        return out

    def check_name(self, name: Any, where: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.fail(
                where,
                f"'{name}' is not a valid name",
                "use letters, digits and _, starting with a letter",
            )
        if keyword.iskeyword(name) or name in FUNCTIONS:
            raise self.fail(where, f"'{name}' is reserved", "choose another name")

    def parameters(self, value: Any) -> dict[str, Parameter]:
        if not isinstance(value, dict):
            raise self.fail("parameters", "expected a mapping name: value")
        out = {}
        for name, entry in value.items():
            where = f"parameters.{name}"
            self.check_name(name, where)
            if isinstance(entry, dict):
                keys = {
                    "value",
                    "learn",
                    "min",
                    "max",
                    "per_condition",
                    "prior",
                    "scale",
                    "population",
                    "spread",
                }
                extra = set(entry) - keys
                if extra:
                    raise self.fail(
                        f"{where}.{sorted(extra)[0]}",
                        "unknown key",
                        "allowed: " + ", ".join(sorted(keys)),
                    )
                scale = entry.get("scale", "lin")
                if scale not in ("lin", "log", "log10"):
                    raise self.fail(
                        f"{where}.scale", f"unknown scale {scale!r}", "lin, log or log10"
                    )
                if "value" not in entry:
                    raise self.fail(where, "missing 'value'")
                param = Parameter(
                    value=self.number(entry["value"], f"{where}.value"),
                    learn=self.flag(entry.get("learn", False), f"{where}.learn"),
                    min=self.number(entry["min"], f"{where}.min")
                    if entry.get("min") is not None
                    else None,
                    max=self.number(entry["max"], f"{where}.max")
                    if entry.get("max") is not None
                    else None,
                    per_condition=self.flag(
                        entry.get("per_condition", False), f"{where}.per_condition"
                    ),
                    prior=self.prior(entry.get("prior"), f"{where}.prior"),
                    scale=scale,
                    population=entry.get("population"),
                    spread=self.number(entry["spread"], f"{where}.spread")
                    if entry.get("spread") is not None
                    else None,
                )
                self.check_population(param, where)
                if param.prior is not None and not param.learn:
                    raise self.fail(
                        f"{where}.prior",
                        "a prior on a fixed parameter has no effect",
                        "set learn: true, or remove the prior",
                    )
                if param.prior is not None and param.prior.dist == "lognormal":
                    if param.min is None or param.min < 0:
                        raise self.fail(
                            f"{where}.prior",
                            "a lognormal prior needs a positive parameter",
                            "add min: 0",
                        )
            else:
                param = Parameter(value=self.number(entry, where))
            lo = -math.inf if param.min is None else param.min
            hi = math.inf if param.max is None else param.max
            if not lo < hi:
                raise self.fail(where, f"min {param.min} is not below max {param.max}")
            if not lo <= param.value <= hi:
                raise self.fail(where, f"value {param.value} is outside [{param.min}, {param.max}]")
            out[name] = param
        return out

    def check_population(self, p: Parameter, where: str) -> None:
        """A population parameter: learned per condition, no bounds or prior of its own."""
        if p.population is None:
            if p.spread is not None:
                raise self.fail(
                    f"{where}.spread", "a spread needs a population", "add population: lognormal"
                )
            return
        if p.population not in POPULATIONS:
            raise self.fail(
                f"{where}.population", f"unknown population {p.population!r}", "lognormal or normal"
            )
        if not (p.per_condition and p.learn):
            raise self.fail(
                f"{where}.population",
                "a population describes values learned per condition (patient)",
                "add learn: true and per_condition: true",
            )
        if p.prior is not None:
            raise self.fail(
                f"{where}.prior",
                "a population parameter's distribution is its prior",
                "remove the prior; the population's median and spread are learned",
            )
        bounded = p.max is not None or (
            p.min is not None and (p.population == "normal" or p.min > 0)
        )
        if bounded:
            raise self.fail(
                where,
                "the individual values of a population parameter follow its distribution: "
                "bounds do not apply",
                "remove min and max (a lognormal population keeps every value positive)",
            )
        if p.population == "lognormal" and not p.value > 0:
            raise self.fail(
                f"{where}.value",
                f"the median of a lognormal population must be positive, got {p.value:g}",
            )
        if p.spread is not None and not p.spread > 0:
            raise self.fail(f"{where}.spread", f"expected a positive spread, got {p.spread:g}")

    def prior(self, value: Any, where: str) -> Prior | None:
        if value is None:
            return None
        if not isinstance(value, dict) or value.get("dist") not in _PRIOR_KEYS:
            raise self.fail(
                where,
                f"expected a prior, got {value!r}",
                "{dist: normal, mean: m, sd: s} or {dist: lognormal, median: m, sigma: s}",
            )
        dist = value["dist"]
        loc_key, scale_key = _PRIOR_KEYS[dist]
        extra = set(value) - {"dist", loc_key, scale_key}
        if extra or loc_key not in value or scale_key not in value:
            raise self.fail(
                where,
                f"a {dist} prior takes '{loc_key}' and '{scale_key}'",
                f"{{dist: {dist}, {loc_key}: ..., {scale_key}: ...}}",
            )
        loc = self.number(value[loc_key], f"{where}.{loc_key}")
        scale = self.number(value[scale_key], f"{where}.{scale_key}")
        if scale <= 0:
            raise self.fail(f"{where}.{scale_key}", f"{scale_key} must be positive")
        if dist == "lognormal" and loc <= 0:
            raise self.fail(f"{where}.{loc_key}", "the median of a lognormal must be positive")
        return Prior(dist, loc, scale)

    def number(self, value: Any, where: str) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise self.fail(where, f"expected a finite number, got {value!r}")
        return float(value)

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {value!r}")
        return value

    def expressions(
        self, value: Any, where: str, names: list[str], keys: list[str] | None = None
    ) -> dict[str, sp.Expr]:
        if not isinstance(value, dict):
            raise self.fail(where, "expected a mapping name: expression")
        out = {}
        for key, text in value.items():
            if keys is not None and key not in keys:
                raise self.fail(
                    f"{where}.{key}", f"'{key}' is not a state", "states: " + ", ".join(keys)
                )
            if keys is None:
                self.check_name(key, f"{where}.{key}")
            out[key] = parse_expression(
                text, names, source=self.source or "spec", where=f"{where}.{key}"
            )
        return out

    def neural(self, value: Any, states: list[str], inputs: list[str]) -> list[NeuralSlot]:
        if value is None:
            return []
        entries = value if isinstance(value, list) else [value]
        slots, seen = [], set()
        for i, entry in enumerate(entries):
            where = "neural" if not isinstance(value, list) else f"neural[{i}]"
            if not isinstance(entry, dict):
                raise self.fail(where, "expected a mapping with 'targets' (and 'inputs')")
            extra = set(entry) - {"name", "targets", "inputs"}
            if extra:
                raise self.fail(
                    f"{where}.{sorted(extra)[0]}", "unknown key", "allowed: name, targets, inputs"
                )
            targets = self.names(entry.get("targets"), f"{where}.targets", required=True)
            for t in targets:
                if t not in states:
                    raise self.fail(
                        f"{where}.targets", f"'{t}' is not a state", "states: " + ", ".join(states)
                    )
                if t in seen:
                    raise self.fail(f"{where}.targets", f"'{t}' already has a network")
                seen.add(t)
            seen_inputs = self.names(entry.get("inputs") or [*states, *inputs], f"{where}.inputs")
            for n in seen_inputs:
                if n not in states and n not in inputs:
                    raise self.fail(
                        f"{where}.inputs",
                        f"'{n}' is not a state or input",
                        "networks see states and inputs: " + ", ".join([*states, *inputs]),
                    )
            name = entry.get("name", f"net{i}" if isinstance(value, list) else "net")
            slots.append(
                NeuralSlot(name=str(name), targets=tuple(targets), inputs=tuple(seen_inputs))
            )
        return slots


def reaction_slot(
    reactions: list[Reaction], states: list[str], inputs: list[str], taken: set[str] = frozenset()
) -> NeuralSlot | None:
    """One network for all neural reactions: a flux each, applied through the stoichiometry.

    It sees all states and inputs; its targets are the states the reactions change.
    """
    learned = [r for r in reactions if r.neural]
    if not learned:
        return None
    targets = [s for s in states if any(r.change(s) for r in learned)]
    matrix = tuple(tuple(float(r.change(s)) for r in learned) for s in targets)
    name = "reactions" if "reactions" not in taken else "reactions_net"
    return NeuralSlot(
        name=name,
        targets=tuple(targets),
        inputs=(*states, *inputs),
        reactions=tuple(r.name for r in learned),
        stoichiometry=matrix,
    )
