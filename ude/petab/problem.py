"""A PEtab problem read into ude: the SBML model as a ModelSpec, and the tables as plain data.

PEtab v1 and v2 problems (and the PEtab SciML extension) are read with the ``petab`` library's
table readers; every id, formula and value is then checked here and turned into sympy
expressions by ude's safe parser (no string is evaluated). What ude cannot simulate yet
(events, pre-equilibration, steady-state measurements, conditions that change compartments,
experiments with several periods) is refused with one line naming the file, the row and the
feature.

Names: *model parameters* are the SBML's (the spec's ``parameters``); *problem parameters* are
the rows of the parameter table (``parameters``); an experiment is one simulation (a v1
simulation condition, a v2 experiment).
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sympy as sp

from ude.errors import UdeError
from ude.petab.sciml import Network, read_arrays, read_network
from ude.spec.expressions import FUNCTIONS, parse_expression
from ude.spec.model_spec import ModelSpec
from ude.spec.observation import NoiseModel
from ude.spec.sbml import read_sbml

SCALES = ("lin", "log", "log10")
TIME = "time"
# PEtab's math functions beyond the spec grammar (log(x) is natural; log(b, x) is not here).
PETAB_FUNCTIONS = {
    **FUNCTIONS,
    "ln": (1, sp.log),
    "log10": (1, lambda x: sp.log(x, 10)),
    "log2": (1, lambda x: sp.log(x, 2)),
    "abs": (1, sp.Abs),
    "sin": (1, sp.sin),
    "cos": (1, sp.cos),
}
PRIORS = {
    # name: (number of parameters, on the parameter's scale)
    "normal": (2, False),
    "laplace": (2, False),
    "uniform": (2, False),
    "logNormal": (2, False),
    "log-normal": (2, False),
    "logLaplace": (2, False),
    "log-laplace": (2, False),
    "parameterScaleNormal": (2, True),
    "parameterScaleLaplace": (2, True),
    "parameterScaleUniform": (2, True),
}
_IO = re.compile(r"^([A-Za-z_]\w*)\.(inputs|outputs)\[(\d+)\](?:\[(\d+)\])?$")
_PARAMS = re.compile(r"^([A-Za-z_]\w*)\.parameters(?:\[([A-Za-z_]\w*)\](?:\.([A-Za-z_]\w*))?)?$")


@dataclass
class ProblemParameter:
    """A row of the parameter table: ``nominal`` is None for a network's array parameters."""

    id: str
    scale: str
    lower: float
    upper: float
    nominal: float | None
    estimate: bool
    prior: tuple[str, tuple[float, ...]] | None = None


@dataclass
class Experiment:
    """One simulation: starts at ``t0``; ``changes`` set model parameters, initial values
    and network inputs (target id -> expression over problem parameter ids)."""

    id: str
    t0: float
    changes: dict[str, sp.Expr] = field(default_factory=dict)
    conditions: list[str] = field(default_factory=list)


@dataclass
class Observable:
    """An observable's formula and noise model; ``placeholders`` and ``noise_placeholders``
    are the per-measurement parameters their formulas use, in order."""

    id: str
    formula: sp.Expr
    noise: NoiseModel
    placeholders: tuple[str, ...] = ()
    noise_placeholders: tuple[str, ...] = ()


@dataclass
class Measurements:
    """The measurement table, one entry per row: experiment and observable indices ``(n,)``,
    times, values, and each row's placeholder values (expressions over problem parameters)."""

    experiment: np.ndarray
    observable: np.ndarray
    time: np.ndarray
    value: np.ndarray
    observable_parameters: list[tuple[sp.Expr, ...]]
    noise_parameters: list[tuple[sp.Expr, ...]]
    table: Any  # the measurement DataFrame, for writing simulations in its order


@dataclass
class NetworkUse:
    """A network and how the problem wires it.

    ``inputs[i][j]``: the problem id of element ``j`` of input argument ``i`` (an argument
    given whole by an array file has one entry, its id). ``outputs``: problem id -> (argument,
    element) of the output. ``parameter_groups``: (problem parameter id, layer or None,
    array name or None), most general first.
    """

    net: Network
    inputs: list[list[str]]
    outputs: dict[str, tuple[int, int]]
    parameter_groups: list[tuple[str, str | None, str | None]]
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


@dataclass
class PetabProblem:
    """Everything a PEtab problem says, in ude's terms (see the module docstring)."""

    spec: ModelSpec
    parameters: dict[str, ProblemParameter]
    experiments: list[Experiment]
    observables: dict[str, Observable]
    measurements: Measurements
    networks: dict[str, NetworkUse] = field(default_factory=dict)
    hybridization: dict[str, sp.Expr] = field(default_factory=dict)
    input_arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    source: str = "problem.yaml"
    version: int = 1
    files: dict[str, Any] = field(default_factory=dict)

    @property
    def estimated(self) -> list[str]:
        """Estimated problem parameters with a scalar value, in table order."""
        return [p.id for p in self.parameters.values() if p.estimate and p.nominal is not None]

    @property
    def has_priors(self) -> bool:
        return any(p.prior is not None for p in self.parameters.values())


# -- reading ------------------------------------------------------------------------------------


def _fail(source: str, where: str | None, message: str, fix: str | None = None) -> UdeError:
    return UdeError(message, source=source, where=where, fix=fix)


def _read_table(path: Path, reader, what: str):
    """A table through the petab library's reader, its errors as one line naming the file.

    The file is read here (:func:`_tsv`) and the frame handed to ``reader`` (petab's
    ``get_*_df``), which then only checks it and sets its index: petab's own file reading
    passes an option pandas 3.1 deprecates, with a warning per table. ``reader=None`` for the
    tables petab has no reader for (v2 experiments, SciML hybridization): used as read.
    """
    if not path.is_file():
        raise _fail(str(path), None, f"{what} file not found", "check the path in problem.yaml")
    try:
        table = _tsv(path)
        if reader is None:
            return table
        with petab_tables():
            return reader(table)
    except KeyError as err:
        raise _fail(str(path), None, f"missing column: {err.args[0]}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise _fail(str(path), None, f"not a readable TSV table ({err})") from None


@contextlib.contextmanager
def petab_tables():
    """Calls into petab's table functions without pandas 3.1's warning about their
    ``set_index``/``reset_index(..., inplace=True)``: that code is petab's (pinned below 0.4, see
    pyproject.toml) and the call is right until pandas 4; any other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The inplace keyword in DataFrame", module=r"petab\."
        )
        yield


def _tsv(path: Path):
    """A TSV table with every number parsed to the nearest double.

    Before pandas 3.1 that takes ``float_precision="round_trip"`` (the default converter could
    be off in the last bits); from 3.1 on every mode is the same correctly rounded converter
    and the option is deprecated (Pandas4Warning), so it is left out.
    """
    import pandas as pd

    major, minor = (int(part) for part in re.match(r"(\d+)\.(\d+)", pd.__version__).groups())
    exact = {} if (major, minor) >= (3, 1) else {"float_precision": "round_trip"}
    return pd.read_csv(path, sep="\t", **exact)


def _cell(value: Any) -> Any:
    """A table cell: None for an empty one, else the value (numbers as floats)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _flag(value: Any, source: str, where: str) -> bool:
    v = _cell(value)
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, float, np.integer, np.floating)) and float(v) in (0.0, 1.0):
        return bool(v)
    raise _fail(source, where, f"expected 0/1 or true/false, got {value!r}")


def _number(value: Any, source: str, where: str, allow_inf: bool = False) -> float:
    v = _cell(value)
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise _fail(source, where, f"expected a number, got {value!r}") from None
    if math.isnan(x) or (math.isinf(x) and not allow_inf):
        raise _fail(source, where, f"expected a finite number, got {value!r}")
    return x


def load_problem(path: str | Path) -> PetabProblem:
    """Read a PEtab problem (v1 or v2, with or without the SciML extension) from its YAML."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise _fail(source, None, "problem file not found", "give the path of a PEtab problem.yaml")
    import petab

    try:
        raw = petab.yaml.load_yaml(path)
    except Exception as err:  # noqa: BLE001 - yaml and IO errors alike become one line
        raise _fail(source, None, f"not a readable YAML file ({err})") from None
    if not isinstance(raw, dict) or "format_version" not in raw:
        raise _fail(source, "format_version", "missing", "a PEtab problem.yaml names its version")
    version = str(raw["format_version"]).split(".")[0]
    if version not in ("1", "2"):
        raise _fail(source, "format_version", f"PEtab version {raw['format_version']!r}")
    return _Reader(path, raw, int(version)).read()


class _Reader:
    def __init__(self, path: Path, raw: dict, version: int):
        self.path = path
        self.source = str(path)
        self.raw = raw
        self.version = version
        self.base = path.parent

    def file(self, name: Any, where: str) -> Path:
        if not isinstance(name, str):
            raise _fail(self.source, where, f"expected a file name, got {name!r}")
        return self.base / name

    def files(self, key: str, part: dict | None = None) -> list[Path]:
        part = self.raw if part is None else part
        names = part.get(key) or []
        if isinstance(names, str):
            names = [names]
        return [self.file(n, key) for n in names]

    def read(self) -> PetabProblem:
        import petab

        raw = self.raw
        if self.version == 1:
            problems = raw.get("problems") or []
            if len(problems) != 1:
                raise _fail(self.source, "problems", "expected exactly one problem")
            part = problems[0]
            models = self.files("sbml_files", part)
            parameter_files = self.files("parameter_file")
        else:
            part = raw
            entries = raw.get("model_files") or {}
            if not isinstance(entries, dict) or len(entries) != 1:
                raise _fail(self.source, "model_files", "expected exactly one model")
            ((model_id, entry),) = entries.items()
            if str(entry.get("language", "sbml")).lower() != "sbml":
                raise _fail(
                    self.source,
                    f"model_files.{model_id}.language",
                    f"model language '{entry.get('language')}' is not supported",
                    "give an SBML model",
                )
            models = [self.file(entry.get("location"), f"model_files.{model_id}.location")]
            parameter_files = self.files("parameter_files")
        if len(models) != 1:
            raise _fail(self.source, "sbml_files", "expected exactly one SBML model")
        if not models[0].is_file():
            raise _fail(str(models[0]), None, "SBML file not found", "check the path in the YAML")
        extensions = raw.get("extensions") or {}
        unknown = [k for k, v in extensions.items() if k != "sciml" and (v or {}).get("required")]
        if unknown:
            raise _fail(self.source, f"extensions.{unknown[0]}", "extension not supported")
        spec = read_sbml(models[0], time=TIME)
        self.spec = spec
        tables = {
            "measurement": [
                _read_table(p, petab.get_measurement_df, "measurement")
                for p in self.files("measurement_files", part)
            ],
            "observable": [
                _read_table(p, petab.get_observable_df, "observable")
                for p in self.files("observable_files", part)
            ],
            "condition": [
                _read_table(p, petab.get_condition_df, "condition")
                for p in self.files("condition_files", part)
            ],
            "parameter": [
                _read_table(p, petab.get_parameter_df, "parameter") for p in parameter_files
            ],
            "mapping": [
                _read_table(p, petab.mapping.get_mapping_df, "mapping")
                for p in self.files("mapping_files", part)
            ],
        }
        self.paths = {
            "measurement": self.files("measurement_files", part),
            "observable": self.files("observable_files", part),
            "condition": self.files("condition_files", part),
            "parameter": parameter_files,
            "mapping": self.files("mapping_files", part),
        }
        if not tables["measurement"] or not tables["observable"] or not tables["parameter"]:
            raise _fail(
                self.source, None, "a problem needs measurement, observable and parameter files"
            )
        self.mapping = self.read_mapping(tables["mapping"])
        self.parameters = self.read_parameters(tables["parameter"])
        sciml = extensions.get("sciml") or {}
        self.networks, self.input_arrays, self.hybridization = self.read_sciml(sciml)
        self.net_outputs = {o for use in self.networks.values() for o in use.outputs}
        observables = self.read_observables(tables["observable"])
        experiments = (
            self.read_conditions_v1(tables["condition"])
            if self.version == 1
            else self.read_experiments_v2(tables["condition"])
        )
        measurements = self.read_measurements(tables["measurement"], experiments, observables)
        return PetabProblem(
            spec=spec,
            parameters=self.parameters,
            experiments=experiments,
            observables=observables,
            measurements=measurements,
            networks=self.networks,
            hybridization=self.hybridization,
            input_arrays=self.input_arrays,
            source=self.source,
            version=self.version,
            files={"model": models[0], **self.paths},
        )

    # -- ids and formulas ----------------------------------------------------------------------
    def model_ids(self) -> set[str]:
        s = self.spec
        return {*s.states, *s.parameters, *s.observables, TIME}

    def parse(self, text: Any, names: set[str], source: str, where: str) -> sp.Expr:
        if isinstance(text, (int, float, np.integer, np.floating)) and not isinstance(text, bool):
            return sp.Float(float(text))
        if not isinstance(text, str):
            raise _fail(source, where, f"expected a formula, got {text!r}")
        # PEtab writes powers as '^' (v2 math; sympy's reading in v1).
        expr = parse_expression(
            text.replace("^", "**"), names, source=source, where=where, functions=PETAB_FUNCTIONS
        )
        # Assignment-rule targets of the SBML model stand for their formulas.
        assigned = {sp.Symbol(k): v for k, v in self.spec.observables.items()}
        return expr.xreplace(assigned) if assigned else expr

    def value(self, text: Any, source: str, where: str) -> sp.Expr:
        """A number or an expression over problem parameter ids (a table's value cell)."""
        return self.parse(text, set(self.parameters), source, where)

    # -- tables --------------------------------------------------------------------------------
    def read_mapping(self, tables: list) -> dict[str, str]:
        out: dict[str, str] = {}
        for table in tables:
            for pid, row in table.iterrows():
                out[str(pid)] = str(row["modelEntityId"]).strip()
        return out

    def read_parameters(self, tables: list) -> dict[str, ProblemParameter]:
        out: dict[str, ProblemParameter] = {}
        for table, path in zip(tables, self.paths["parameter"], strict=True):
            src = str(path)
            for line, (pid, row) in enumerate(table.iterrows(), start=2):
                pid = str(pid)
                where = f"row {line} ({pid})"
                scale = _cell(row.get("parameterScale", "lin")) or "lin"
                if scale not in SCALES:
                    raise _fail(
                        src,
                        f"{where}, column parameterScale",
                        f"unknown parameterScale '{scale}'",
                        "lin, log or log10",
                    )
                estimate = _flag(row.get("estimate", 1), src, f"{where}, column estimate")
                nominal_cell = _cell(row.get("nominalValue"))
                nominal: float | None
                if isinstance(nominal_cell, str) and nominal_cell.strip() == "array":
                    nominal = None
                elif nominal_cell is None and not estimate:
                    raise _fail(src, f"{where}, column nominalValue", "a fixed parameter needs one")
                elif nominal_cell is None:
                    nominal = math.nan  # estimated without a start: filled from the bounds
                else:
                    nominal = _number(nominal_cell, src, f"{where}, column nominalValue")
                lower = (
                    _number(
                        row.get("lowerBound", -math.inf), src, f"{where}, column lowerBound", True
                    )
                    if _cell(row.get("lowerBound")) is not None
                    else -math.inf
                )
                upper = (
                    _number(
                        row.get("upperBound", math.inf), src, f"{where}, column upperBound", True
                    )
                    if _cell(row.get("upperBound")) is not None
                    else math.inf
                )
                if estimate and nominal is not None and lower > upper:
                    raise _fail(src, where, f"lowerBound {lower} is above upperBound {upper}")
                if (
                    scale != "lin"
                    and nominal is not None
                    and not (nominal > 0 or math.isnan(nominal))
                ):
                    raise _fail(
                        src,
                        f"{where}, column nominalValue",
                        f"a {scale}-scaled parameter needs a positive value, got {nominal}",
                    )
                if nominal is not None and math.isnan(nominal):
                    lo, hi = lower, upper
                    if not (math.isfinite(lo) and math.isfinite(hi)):
                        raise _fail(src, f"{where}, column nominalValue", "missing")
                    nominal = math.sqrt(lo * hi) if scale != "lin" and lo > 0 else (lo + hi) / 2
                prior = self.read_prior(row, src, where)
                if pid in out:
                    raise _fail(src, where, f"parameter '{pid}' is defined twice")
                out[pid] = ProblemParameter(pid, scale, lower, upper, nominal, estimate, prior)
        return out

    def read_prior(self, row, src: str, where: str) -> tuple[str, tuple[float, ...]] | None:
        kind = _cell(row.get("priorDistribution", row.get("objectivePriorType")))
        if kind is None:
            return None
        kind = str(kind).strip()
        if kind not in PRIORS:
            raise _fail(
                src,
                f"{where}, column priorDistribution",
                f"prior '{kind}' is not supported",
                "supported: " + ", ".join(PRIORS),
            )
        text = _cell(row.get("priorParameters", row.get("objectivePriorParameters")))
        try:
            values = tuple(float(x) for x in str(text).split(";"))
        except ValueError:
            raise _fail(
                src, f"{where}, column priorParameters", f"expected numbers, got {text!r}"
            ) from None
        if len(values) != PRIORS[kind][0]:
            raise _fail(src, f"{where}, column priorParameters", f"a {kind} prior takes 2 numbers")
        return kind, values

    def read_observables(self, tables: list) -> dict[str, Observable]:
        out: dict[str, Observable] = {}
        base = self.model_ids() | set(self.parameters) | self.net_outputs
        for table, path in zip(tables, self.paths["observable"], strict=True):
            src = str(path)
            for line, (oid, row) in enumerate(table.iterrows(), start=2):
                oid = str(oid)
                where = f"row {line} ({oid})"
                dist = _cell(row.get("noiseDistribution")) or "normal"
                trans = _cell(row.get("observableTransformation")) or "lin"
                if isinstance(dist, str) and "-" in dist:  # v2: log-normal, log10-laplace, ...
                    trans, dist = dist.split("-", 1)
                if dist not in ("normal", "laplace"):
                    raise _fail(
                        src,
                        f"{where}, column noiseDistribution",
                        f"'{dist}' is not supported",
                        "normal or laplace",
                    )
                if trans not in SCALES:
                    raise _fail(
                        src,
                        f"{where}, column observableTransformation",
                        f"'{trans}' is not supported",
                        "lin, log or log10",
                    )
                obs_ph = self.placeholders(
                    row, "observablePlaceholders", "observableParameter", oid
                )
                noise_ph = self.placeholders(row, "noisePlaceholders", "noiseParameter", oid)
                text = _cell(row.get("observableFormula"))
                if text is None:
                    raise _fail(src, f"{where}, column observableFormula", "is empty")
                formula = self.parse(
                    text, base | set(obs_ph), src, f"{where}, column observableFormula"
                )
                noise_text = _cell(row.get("noiseFormula"))
                if noise_text is None:
                    raise _fail(src, f"{where}, column noiseFormula", "is empty")
                sigma = self.parse(
                    noise_text,
                    base | set(obs_ph) | set(noise_ph),
                    src,
                    f"{where}, column noiseFormula",
                )
                out[oid] = Observable(
                    oid, formula, NoiseModel(sigma, trans, dist), obs_ph, noise_ph
                )
        return out

    def placeholders(self, row, column: str, prefix: str, oid: str) -> tuple[str, ...]:
        cell = _cell(row.get(column))
        if cell is not None:
            return tuple(s.strip() for s in str(cell).split(";") if s.strip())
        # v1: observableParameter{n}_{observableId}, numbered from 1, in either formula.
        text = " ".join(str(_cell(row.get(c)) or "") for c in ("observableFormula", "noiseFormula"))
        found = {int(m.group(1)) for m in re.finditer(rf"\b{prefix}(\d+)_{re.escape(oid)}\b", text)}
        return tuple(f"{prefix}{n}_{oid}" for n in range(1, max(found, default=0) + 1))

    def check_target(self, target: str, src: str, where: str) -> None:
        s = self.spec
        net_inputs = {i for use in self.networks.values() for arg in use.inputs for i in arg}
        if target in s.states or target in s.parameters or target in net_inputs:
            return
        if target in self.parameters:
            return
        raise _fail(
            src,
            where,
            f"target '{target}' is not a parameter or species of the model",
            "conditions can set model parameters, initial values and network inputs",
        )

    def read_conditions_v1(self, tables: list) -> list[Experiment]:
        out: dict[str, Experiment] = {}
        for table, path in zip(tables, self.paths["condition"], strict=True):
            src = str(path)
            for line, (cid, row) in enumerate(table.iterrows(), start=2):
                cid = str(cid)
                exp = Experiment(cid, 0.0, conditions=[cid])
                for col, cell in row.items():
                    if col == "conditionName" or _cell(cell) is None:
                        continue
                    where = f"row {line} ({cid}), column {col}"
                    if col not in self.spec.states and col not in self.spec.parameters:
                        raise _fail(
                            src,
                            where,
                            f"'{col}' is not a parameter or species of the model",
                            "compartments and other targets are not supported",
                        )
                    exp.changes[col] = self.value(cell, src, where)
                out[cid] = exp
        return list(out.values())

    def read_experiments_v2(self, tables: list) -> list[Experiment]:
        conditions: dict[str, dict[str, sp.Expr]] = {}
        for table, path in zip(tables, self.paths["condition"], strict=True):
            src = str(path)
            for line, (cid, row) in enumerate(table.iterrows(), start=2):
                cid = str(cid)
                where = f"row {line} ({cid})"
                target = str(_cell(row.get("targetId")) or "")
                self.check_target(target, src, f"{where}, column targetId")
                value = self.value(row.get("targetValue"), src, f"{where}, column targetValue")
                conditions.setdefault(cid, {})[target] = value
        experiments: dict[str, Experiment] = {}
        for path in self.files("experiment_files"):
            table = _read_table(path, None, "experiment")
            src = str(path)
            for line, row in enumerate(table.to_dict("records"), start=2):
                eid = str(_cell(row.get("experimentId")) or "")
                where = f"row {line} ({eid})"
                t = _number(row.get("time"), src, f"{where}, column time", allow_inf=True)
                if math.isinf(t):
                    raise _fail(src, where, "pre-equilibration (time -inf) is not supported")
                if eid in experiments:
                    raise _fail(
                        src,
                        where,
                        "experiments with several periods (changes during an experiment) "
                        "are not supported",
                    )
                exp = Experiment(eid, t)
                cids = [
                    c.strip()
                    for c in str(_cell(row.get("conditionId")) or "").split(";")
                    if c.strip()
                ]
                for cid in cids:
                    if cid not in conditions and cid not in self.known_array_conditions():
                        raise _fail(
                            src,
                            f"{where}, column conditionId",
                            f"condition '{cid}' is not in the conditions table",
                        )
                    exp.changes.update(conditions.get(cid, {}))
                exp.conditions = cids
                experiments[eid] = exp
        return list(experiments.values())

    def known_array_conditions(self) -> set[str]:
        return {c for conds in self.input_arrays.values() for c in conds}

    def read_measurements(
        self, tables: list, experiments: list[Experiment], observables: dict[str, Observable]
    ) -> Measurements:
        import pandas as pd

        index = {e.id: i for i, e in enumerate(experiments)}
        obs_index = {o: i for i, o in enumerate(observables)}
        exp_col = "simulationConditionId" if self.version == 1 else "experimentId"
        rows_e, rows_o, rows_t, rows_y, ops, nps = [], [], [], [], [], []
        for table, path in zip(tables, self.paths["measurement"], strict=True):
            src = str(path)
            for line, row in enumerate(table.to_dict("records"), start=2):
                where = f"row {line}"
                if _cell(row.get("preequilibrationConditionId")) is not None:
                    raise _fail(
                        src,
                        f"{where}, column preequilibrationConditionId",
                        "pre-equilibration is not supported",
                    )
                eid = _cell(row.get(exp_col))
                if eid is None and self.version == 2 and len(experiments) == 0:
                    experiments.append(Experiment("", 0.0))
                    index[""] = 0
                    eid = ""
                eid = "" if eid is None else str(eid)
                if eid not in index:
                    if self.version == 1:
                        experiments.append(Experiment(eid, 0.0, conditions=[eid]))
                        index[eid] = len(experiments) - 1
                        if self.paths["condition"]:
                            raise _fail(
                                src,
                                f"{where}, column {exp_col}",
                                f"condition '{eid}' is not in the conditions table",
                            )
                    else:
                        raise _fail(
                            src,
                            f"{where}, column {exp_col}",
                            f"experiment '{eid}' is not in the experiments table",
                        )
                oid = str(_cell(row.get("observableId")) or "")
                if oid not in observables:
                    raise _fail(
                        src,
                        f"{where}, column observableId",
                        f"observable '{oid}' is not in the observables table",
                    )
                t = _number(row.get("time"), src, f"{where}, column time", allow_inf=True)
                if math.isinf(t):
                    raise _fail(
                        src,
                        f"{where}, column time",
                        "steady-state measurements (time inf) are not supported",
                    )
                if t < experiments[index[eid]].t0:
                    raise _fail(
                        src, f"{where}, column time", f"time {t} is before the experiment starts"
                    )
                y = _number(row.get("measurement"), src, f"{where}, column measurement")
                obs = observables[oid]
                ops.append(
                    self.overrides(
                        row.get("observableParameters"),
                        obs.placeholders,
                        src,
                        f"{where}, column observableParameters",
                    )
                )
                nps.append(
                    self.overrides(
                        row.get("noiseParameters"),
                        obs.noise_placeholders,
                        src,
                        f"{where}, column noiseParameters",
                    )
                )
                rows_e.append(index[eid])
                rows_o.append(obs_index[oid])
                rows_t.append(t)
                rows_y.append(y)
        starts = {e.t0 for e in experiments}
        if len(starts) > 1:
            raise _fail(
                self.source,
                "experiments",
                "experiments start at different times",
                "start them all at one time",
            )
        return Measurements(
            experiment=np.array(rows_e, dtype=int),
            observable=np.array(rows_o, dtype=int),
            time=np.array(rows_t, dtype=float),
            value=np.array(rows_y, dtype=float),
            observable_parameters=ops,
            noise_parameters=nps,
            table=pd.concat(tables, ignore_index=True),
        )

    def overrides(
        self, cell: Any, names: tuple[str, ...], src: str, where: str
    ) -> tuple[sp.Expr, ...]:
        v = _cell(cell)
        parts = (
            []
            if v is None
            else [s.strip() for s in str(v).split(";")]
            if isinstance(v, str)
            else [v]
        )
        if len(parts) != len(names):
            raise _fail(
                src,
                where,
                f"gives {len(parts)} values, the observable has {len(names)} placeholders "
                f"({', '.join(names) or 'none'})",
            )
        return tuple(self.value(p, src, where) for p in parts)

    # -- SciML ---------------------------------------------------------------------------------
    def read_sciml(self, sciml: dict) -> tuple[dict[str, NetworkUse], dict, dict[str, sp.Expr]]:
        if not sciml:
            return {}, {}, {}
        src = self.source
        params: dict[str, dict] = {}
        inputs: dict[str, dict[str, np.ndarray]] = {}
        for path in self.files("array_files", sciml):
            p, i = read_arrays(path)
            for net_id, layers in p.items():
                params.setdefault(net_id, {}).update(layers)
            inputs.update(i)
        nets: dict[str, NetworkUse] = {}
        for net_id, entry in (sciml.get("neural_networks") or {}).items():
            where = f"extensions.sciml.neural_networks.{net_id}"
            if str(entry.get("format", "YAML")).upper() != "YAML":
                raise _fail(
                    src, where, f"network format '{entry.get('format')}' is not supported", "YAML"
                )
            net = read_network(self.file(entry.get("location"), where), net_id)
            nets[net_id] = NetworkUse(net, [[] for _ in range(net.n_inputs)], {}, [])
        for pid, entity in self.mapping.items():
            m = _IO.match(entity)
            q = _PARAMS.match(entity)
            net_id = (m or q).group(1) if (m or q) else None
            if net_id is None or net_id not in nets:
                if net_id is not None or "." in entity:
                    raise _fail(
                        str(self.paths["mapping"][0]),
                        f"'{pid}'",
                        f"'{entity}' names no network of the problem",
                    )
                continue
            use = nets[net_id]
            if m and m.group(2) == "inputs":
                arg = int(m.group(3))
                if arg >= len(use.inputs):
                    raise _fail(
                        str(self.paths["mapping"][0]),
                        f"'{pid}'",
                        f"network '{net_id}' has {len(use.inputs)} input arguments",
                    )
                elem = int(m.group(4)) if m.group(4) is not None else 0
                slots = use.inputs[arg]
                slots.extend([""] * (elem + 1 - len(slots)))
                slots[elem] = pid
            elif m:
                use.outputs[pid] = (int(m.group(3)), int(m.group(4) or 0))
            else:
                layer, name = q.group(2), q.group(3)
                if layer is not None and layer not in use.net.layers:
                    raise _fail(
                        str(self.paths["mapping"][0]),
                        f"'{pid}'",
                        f"network '{net_id}' has no layer '{layer}'",
                    )
                use.parameter_groups.append((pid, layer, name))
        for net_id, use in nets.items():
            use.parameter_groups.sort(key=lambda g: (g[1] is not None, g[2] is not None))
            if net_id in params:
                from ude.petab.sciml import load_parameters

                load_parameters(use.net, params[net_id], self.source)
            for arg, slots in enumerate(use.inputs):
                if not slots or "" in slots:
                    raise _fail(
                        self.source,
                        f"network '{net_id}'",
                        f"input argument {arg} is not fully mapped in the mapping table",
                    )
        hybrid: dict[str, sp.Expr] = {}
        array_ids = set()
        names = (
            self.model_ids() | set(self.parameters) | {o for u in nets.values() for o in u.outputs}
        )
        for path in self.files("hybridization_files", sciml):
            table = _read_table(path, None, "hybridization")
            for line, row in enumerate(table.to_dict("records"), start=2):
                target = str(_cell(row.get("targetId")) or "")
                value = _cell(row.get("targetValue"))
                where = f"row {line} ({target})"
                if isinstance(value, str) and value.strip() == "array":
                    array_ids.add(target)
                    continue
                hybrid[target] = self.parse(value, names, str(path), f"{where}, column targetValue")
        for net_id, use in nets.items():
            for arg in use.inputs:
                if len(arg) == 1 and arg[0] in array_ids:
                    key = arg[0]
                    if key not in inputs:
                        raise _fail(
                            self.source,
                            f"network '{net_id}'",
                            f"input '{key}' is an array but no array file holds inputs/{key}",
                        )
                    use.arrays[key] = inputs[key]
        return nets, inputs, hybrid
