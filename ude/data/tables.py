"""Measurements from CSV tables: the wide and long formats and the conditions table.

Wide: ``condition, time, <observable>...`` (``condition`` optional for one condition).
Long: ``condition, time, observable, value[, sigma]`` (``condition`` optional).
Conditions table: ``condition``, one column per input of the spec, ``init_<state>`` columns.

Rows may come in any order; times are sorted and merged into one grid (the union over
conditions), entries nobody measured are NaN. Repeated rows of one condition and time (one
observable, in the long format) are replicates. Empty cells (also ``NA``, ``NaN``) are missing
values. Every problem is found while reading and raised as one :class:`UdeError` that names the
file, the line or column and what was expected, so nothing is trained on a half-read table.

Initial values (``init_<state>``) apply at the first time of the grid.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ude.data.doses import read_doses
from ude.data.measurements import Measurements
from ude.errors import UdeError
from ude.spec.model_spec import ModelSpec, load_spec

MISSING = {"", "na", "nan", "n/a"}
DEFAULT_CONDITION = "default"
LONG_COLUMNS = ("condition", "time", "observable", "value", "sigma")


@dataclass
class _Rows:
    """A CSV file's header and data rows, each row with its line number in the file."""

    path: str
    header: list[str]
    rows: list[tuple[int, list[str]]]

    def column(self, name: str) -> int | None:
        return self.header.index(name) if name in self.header else None


def _fail(path: str, where: str | None, message: str, fix: str | None = None) -> UdeError:
    return UdeError(message, source=path, where=where, fix=fix)


def _read_rows(path: str | Path, what: str = "data") -> _Rows:
    """Header and rows of a CSV file; blank lines and lines starting with ``#`` are skipped."""
    p, name = Path(path), str(path)
    if not p.is_file():
        raise _fail(
            name,
            None,
            "file not found" if not p.exists() else "not a file",
            f"give the path of a CSV {what} table (relative to where you run)",
        )
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise _fail(name, None, f"not a UTF-8 text file ({err.reason})") from None
    if not text.strip():
        raise _fail(name, None, "the file is empty", f"expected a CSV {what} table with a header")
    reader = csv.reader(text.splitlines())
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    try:
        for cells in reader:
            line = reader.line_num
            cells = [c.strip() for c in cells]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if header is None:
                header = cells
                _check_delimiter(name, header, line)
                _check_header(name, header, line)
                continue
            if len(cells) != len(header):
                raise _fail(
                    name,
                    f"line {line}",
                    f"has {len(cells)} cells, the header has {len(header)}",
                    "every row needs one cell per column; leave a cell empty for a missing value",
                )
            rows.append((line, cells))
    except csv.Error as err:
        raise _fail(name, f"line {reader.line_num}", f"not valid CSV: {err}") from None
    if header is None:
        raise _fail(name, None, "the file is empty", f"expected a CSV {what} table with a header")
    if not rows:
        raise _fail(name, None, "no data rows below the header")
    return _Rows(name, header, rows)


# Delimiters other than the comma that tables come with (a spreadsheet's locale, a TSV export).
_DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "'|'"}


def _check_delimiter(path: str, header: list[str], line: int) -> None:
    """A header read as one column that another delimiter would split: name that delimiter."""
    if len(header) != 1:
        return
    for sep, name in _DELIMITERS.items():
        if sep in header[0]:
            raise _fail(
                path,
                f"line {line}",
                f"the columns are separated by {name}, not commas: "
                f"the header '{header[0]}' reads as one column",
                "save the table as comma-separated CSV, with '.' as the decimal point",
            )


def _check_header(path: str, header: list[str], line: int) -> None:
    for i, col in enumerate(header):
        if not col:
            raise _fail(path, f"line {line}, column {i + 1}", "the header cell is empty")
        if header.index(col) != i:
            raise _fail(path, f"column '{col}'", "appears twice in the header")


def _number(path: str, line: int, column: str, cell: str, required: bool = False) -> float:
    """A finite number from ``cell``; NaN for a missing value unless ``required``."""
    if cell.lower() in MISSING:
        if required:
            raise _fail(path, f"line {line}, column '{column}'", "is empty, expected a number")
        return math.nan
    try:
        value = float(cell)
    except ValueError:
        raise _fail(
            path, f"line {line}, column '{column}'", f"expected a number, got '{cell}'"
        ) from None
    if not math.isfinite(value):
        raise _fail(
            path, f"line {line}, column '{column}'", f"expected a finite number, got {cell}"
        )
    return value


def _spec_names(spec: ModelSpec) -> list[str]:
    return [*spec.states, *spec.observables]


def _check_observable(path: str, where: str, name: str, spec: ModelSpec | None) -> None:
    if spec is None or name in spec.states or name in spec.observables:
        return
    raise _fail(
        path,
        where,
        f"'{name}' matches no state or observable of the spec {spec.source or spec.name}",
        "the spec's states and observables are: "
        + ", ".join(_spec_names(spec))
        + "; rename the column or declare it under 'observables' in the spec",
    )


@dataclass
class ConditionsTable:
    """The conditions table: per-condition ``inputs (condition, input)`` and known initial
    values ``initial {state: (condition,)}`` (NaN: unknown, learned)."""

    path: str
    conditions: list[str]
    input_names: list[str]
    inputs: np.ndarray
    initial: dict[str, np.ndarray] = field(default_factory=dict)
    lines: list[int] = field(default_factory=list)


def read_conditions(path: str | Path, spec: str | ModelSpec | None = None) -> ConditionsTable:
    """Read a conditions table: ``condition``, input columns, ``init_<state>`` columns.

    With a ``spec``, every input of the spec needs a column (and a value in every row), and
    every other column must be ``init_<state>`` for a state of the spec.
    """
    spec = None if spec is None else load_spec(spec)
    t = _read_rows(path, "conditions")
    cond_col = t.column("condition")
    if cond_col is None:
        raise _fail(t.path, "header", "no 'condition' column", "name the first column 'condition'")
    inputs, init = [], []
    for col in t.header:
        if col == "condition":
            continue
        if col.startswith("init_"):
            state = col[len("init_") :]
            if spec is not None and state not in spec.states:
                raise _fail(
                    t.path,
                    f"column '{col}'",
                    f"'{state}' is not a state of the spec {spec.source or spec.name}",
                    "init_<state> columns name states: " + ", ".join(spec.states),
                )
            init.append(col)
        else:
            if spec is not None and col not in spec.inputs:
                raise _fail(
                    t.path,
                    f"column '{col}'",
                    f"is neither an input of the spec {spec.source or spec.name} "
                    "nor an init_<state> column",
                    "inputs: "
                    + (", ".join(spec.inputs) or "none declared")
                    + "; initial values: "
                    + ", ".join(f"init_{s}" for s in spec.states),
                )
            inputs.append(col)
    if spec is not None:
        absent = [u for u in spec.inputs if u not in inputs]
        if absent:
            raise _fail(
                t.path,
                "header",
                f"no column for the spec's input '{absent[0]}'",
                "give every input of the spec a column: " + ", ".join(spec.inputs),
            )
        inputs = list(spec.inputs)
    names: list[str] = []
    lines: list[int] = []
    u = np.full((len(t.rows), len(inputs)), np.nan)
    x0 = {c[len("init_") :]: np.full(len(t.rows), np.nan) for c in init}
    for r, (line, cells) in enumerate(t.rows):
        name = cells[cond_col]
        if not name:
            raise _fail(t.path, f"line {line}, column 'condition'", "is empty, expected a name")
        if name in names:
            raise _fail(
                t.path,
                f"line {line}",
                f"condition '{name}' appears twice (first on line {lines[names.index(name)]})",
                "one row per condition",
            )
        names.append(name)
        lines.append(line)
        for j, col in enumerate(inputs):
            u[r, j] = _number(t.path, line, col, cells[t.header.index(col)], required=True)
        for col in init:
            x0[col[len("init_") :]][r] = _number(t.path, line, col, cells[t.header.index(col)])
    return ConditionsTable(t.path, names, inputs, u, x0, lines)


def _detect_format(t: _Rows) -> str:
    return "long" if "observable" in t.header and "value" in t.header else "wide"


def read_measurements(
    path: str | Path,
    spec: str | ModelSpec | None = None,
    conditions: str | Path | None = None,
    format: str = "auto",
    time_column: str = "time",
    doses: str | Path | None = None,
    dose_horizon: float | None = None,
) -> Measurements:
    """Measurements from a wide or long CSV table (and optional conditions and dosing tables).

    Args:
        path: the data table.
        spec: the model spec (a file, a zoo name or a ModelSpec); when given, every observable
            must be a state or observable of it and its inputs must be in the conditions table.
        conditions: the conditions table (inputs, ``init_<state>`` columns), or None.
        format: ``wide``, ``long`` or ``auto`` (long when the header has ``observable`` and
            ``value``).
        time_column: the name of the time column.
        doses: the dosing table (:mod:`ude.data.doses`), or None; it needs a ``spec`` (a
            dose names a state).
        dose_horizon: the latest time a dose may be given (default: each condition's last
            measurement; a personalised twin's forecast may plan doses past its data).

    Returns:
        :class:`Measurements` with ``values (condition, time, replicate, observable)``.
    """
    spec = None if spec is None else load_spec(spec)
    t = _read_rows(path)
    if format not in {"auto", "wide", "long"}:
        raise UdeError(f"unknown format '{format}'", source="data.format", fix="wide, long or auto")
    fmt = _detect_format(t) if format == "auto" else format
    if t.column(time_column) is None:
        raise _fail(
            t.path,
            "header",
            f"no '{time_column}' column",
            f"the columns are {', '.join(t.header)}; name the time column '{time_column}'"
            + (" or set data.time_column" if time_column == "time" else ""),
        )
    records = (_long_records if fmt == "long" else _wide_records)(t, spec, time_column)
    table = None if conditions is None else read_conditions(conditions, spec)
    measurements = _assemble(t, records, table, spec)
    if doses is not None:
        if spec is None:
            raise UdeError("a dosing table needs the model spec", source=str(doses))
        # one condition without a 'condition' column: the dosing table may leave it out too
        default = measurements.conditions[0] if t.column("condition") is None else None
        horizons = measurements.horizons()
        if dose_horizon is not None:
            horizons = {c: float(dose_horizon) for c in horizons}
        measurements.doses = read_doses(doses, spec.states, horizons, default)
        # a dose before the first sample (a first dose at 0, sampled from 0.5 h on): the
        # grid starts at the dose, where the initial (pre-dose) states then apply
        first = min((d.time for s in measurements.doses.values() for d in s), default=np.inf)
        measurements = measurements.starting_at(first)
    return measurements


@dataclass
class _Record:
    line: int
    condition: str
    time: float
    observable: str
    value: float
    sigma: float = math.nan


def _condition(t: _Rows, line: int, cells: list[str]) -> str:
    col = t.column("condition")
    if col is None:
        return DEFAULT_CONDITION
    name = cells[col]
    if not name:
        raise _fail(t.path, f"line {line}, column 'condition'", "is empty, expected a name")
    return name


def _time(t: _Rows, line: int, cells: list[str], time_column: str) -> float:
    value = _number(t.path, line, time_column, cells[t.column(time_column)], required=True)
    if value < 0:
        raise _fail(
            t.path,
            f"line {line}, column '{time_column}'",
            f"negative time {value:g}: times count from the start of the experiment, where "
            "the initial values apply",
            "shift the times so that the first one is 0 or later",
        )
    return value


def _wide_records(t: _Rows, spec: ModelSpec | None, time_column: str) -> list[_Record]:
    observables = [c for c in t.header if c not in {"condition", time_column}]
    if not observables:
        raise _fail(
            t.path,
            "header",
            "no observable columns",
            "expected 'condition', '"
            + time_column
            + "' and one column per observable"
            + (f" ({', '.join(_spec_names(spec))})" if spec is not None else ""),
        )
    if "sigma" in observables or "value" in observables or "observable" in observables:
        raise _fail(
            t.path,
            "header",
            "looks like a long table without both 'observable' and 'value' columns",
            "long format: condition, time, observable, value[, sigma]",
        )
    for name in observables:
        _check_observable(t.path, f"column '{name}'", name, spec)
    out = []
    for line, cells in t.rows:
        cond = _condition(t, line, cells)
        time = _time(t, line, cells, time_column)
        for name in observables:
            value = _number(t.path, line, name, cells[t.header.index(name)])
            out.append(_Record(line, cond, time, name, value))
    return out


def _long_records(t: _Rows, spec: ModelSpec | None, time_column: str) -> list[_Record]:
    allowed = {"condition", time_column, "observable", "value", "sigma"}
    extra = [c for c in t.header if c not in allowed]
    for need in ("observable", "value"):
        if t.column(need) is None:
            raise _fail(
                t.path,
                "header",
                f"no '{need}' column",
                f"long format: condition, {time_column}, observable, value[, sigma]",
            )
    if extra:
        raise _fail(
            t.path,
            f"column '{extra[0]}'",
            "is not a column of the long format",
            f"long format: condition, {time_column}, observable, value[, sigma]; "
            "put inputs and initial values in the conditions table",
        )
    obs_col, val_col, sig_col = t.column("observable"), t.column("value"), t.column("sigma")
    checked: set[str] = set()
    out = []
    for line, cells in t.rows:
        cond = _condition(t, line, cells)
        time = _time(t, line, cells, time_column)
        name = cells[obs_col]
        if not name:
            raise _fail(t.path, f"line {line}, column 'observable'", "is empty, expected a name")
        if name not in checked:
            _check_observable(t.path, f"line {line}, column 'observable'", name, spec)
            checked.add(name)
        value = _number(t.path, line, "value", cells[val_col])
        sigma = math.nan
        if sig_col is not None:
            sigma = _number(t.path, line, "sigma", cells[sig_col])
            if sigma <= 0:
                raise _fail(
                    t.path,
                    f"line {line}, column 'sigma'",
                    f"expected a positive standard deviation, got {cells[sig_col]}",
                    "leave it empty to learn the noise level",
                )
        out.append(_Record(line, cond, time, name, value, sigma))
    return out


def _assemble(
    t: _Rows, records: list[_Record], table: ConditionsTable | None, spec: ModelSpec | None
) -> Measurements:
    conditions = list(dict.fromkeys(r.condition for r in records))
    observables = list(dict.fromkeys(r.observable for r in records))
    if spec is not None:  # the spec's order reads best in plots and metrics
        order = _spec_names(spec)
        observables.sort(key=order.index)
    times = np.array(sorted({r.time for r in records}))
    c_idx = {c: i for i, c in enumerate(conditions)}
    o_idx = {o: i for i, o in enumerate(observables)}
    t_idx = {float(x): i for i, x in enumerate(times)}
    # Replicate k of an entry is its k-th row; rows with a value only are counted.
    count: dict[tuple[int, int, int], int] = {}
    placed = []
    for r in records:
        if math.isnan(r.value):
            continue
        key = (c_idx[r.condition], t_idx[r.time], o_idx[r.observable])
        k = count.get(key, 0)
        count[key] = k + 1
        placed.append((key, k, r))
    n_rep = max(count.values(), default=1)
    shape = (len(conditions), len(times), n_rep, len(observables))
    values = np.full(shape, np.nan)
    sigma = np.full(shape, np.nan)
    for (c, i, o), k, r in placed:
        values[c, i, k, o] = r.value
        sigma[c, i, k, o] = r.sigma
    _check_series(t, values, conditions, observables)
    if spec is not None and spec.inputs and table is None:
        raise _fail(
            t.path,
            None,
            f"the spec has inputs ({', '.join(spec.inputs)}) but no conditions table was given",
            "give data.conditions=<conditions.csv> with columns condition, "
            + ", ".join(spec.inputs),
        )
    input_names: list[str] = []
    inputs = np.zeros((len(conditions), 0))
    initial: dict[str, np.ndarray] = {}
    if table is not None:
        rows = _match_conditions(t, table, conditions)
        conditions = [table.conditions[r] for r in rows]  # a table without 'condition' column
        input_names = list(table.input_names)
        inputs = table.inputs[rows]
        initial = {s: v[rows] for s, v in table.initial.items()}
    return Measurements(
        times=times,
        values=values,
        observables=observables,
        conditions=conditions,
        sigma=None if np.isnan(sigma).all() else sigma,
        input_names=input_names,
        inputs=inputs,
        initial=initial,
        source=t.path,
    )


def _check_series(t: _Rows, values: np.ndarray, conditions: list[str], obs: list[str]) -> None:
    """Refuse an observable or a condition without a single value: it can only be a mistake.
    (One observable unmeasured in one condition is allowed: experiments differ.)"""
    long = _detect_format(t) == "long"
    for o, name in enumerate(obs):
        if np.isnan(values[..., o]).all():
            where = "column 'value'" if long else f"column '{name}'"
            raise _fail(
                t.path,
                where,
                f"observable '{name}' has no values (every cell is empty)",
                "remove the column or fill in the measurements",
            )
    for c, name in enumerate(conditions):
        if np.isnan(values[c]).all():
            raise _fail(
                t.path,
                "column 'condition'",
                f"condition '{name}' has no values (every cell is empty)",
                "remove its rows or fill in the measurements",
            )


def _match_conditions(t: _Rows, table: ConditionsTable, conditions: list[str]) -> list[int]:
    """Row of the conditions table for each data condition."""
    if conditions == [DEFAULT_CONDITION] and t.column("condition") is None:
        if len(table.conditions) != 1:
            raise _fail(
                t.path,
                "header",
                f"no 'condition' column, but the conditions table {table.path} has "
                f"{len(table.conditions)} conditions",
                "add a 'condition' column naming the condition of each row",
            )
        return [0]
    for c in conditions:
        if c not in table.conditions:
            raise _fail(
                table.path,
                "column 'condition'",
                f"no row for condition '{c}' of {t.path}",
                "the conditions table needs one row per condition: " + ", ".join(conditions),
            )
    for c, line in zip(table.conditions, table.lines, strict=True):
        if c not in conditions:
            raise _fail(
                table.path,
                f"line {line}",
                f"condition '{c}' has no data in {t.path}",
                "remove the row, or check the spelling against: " + ", ".join(conditions),
            )
    return [table.conditions.index(c) for c in conditions]


# -- writing -----------------------------------------------------------------------------------
def _cell(value: float) -> str:
    return "" if math.isnan(value) else repr(float(value))


def write_wide(measurements: Measurements, path: str | Path) -> Path:
    """Write ``measurements`` as a wide table (one row per condition, time and replicate;
    rows without any value are left out)."""
    m, path = measurements, Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["condition", "time", *m.observables])
        for c, cond in enumerate(m.conditions):
            for i, time in enumerate(m.times):
                for r in range(m.values.shape[2]):
                    row = m.values[c, i, r]
                    if not np.isnan(row).all():
                        w.writerow([cond, repr(float(time)), *map(_cell, row)])
    return path


def write_long(measurements: Measurements, path: str | Path) -> Path:
    """Write ``measurements`` as a long table, with a ``sigma`` column when sigma is known."""
    m, path = measurements, Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["condition", "time", "observable", "value"] + (["sigma"] * (m.sigma is not None))
        )
        for c, cond in enumerate(m.conditions):
            for i, time in enumerate(m.times):
                for r in range(m.values.shape[2]):
                    for o, name in enumerate(m.observables):
                        v = m.values[c, i, r, o]
                        if np.isnan(v):
                            continue
                        row = [cond, repr(float(time)), name, _cell(v)]
                        if m.sigma is not None:
                            row.append(_cell(m.sigma[c, i, r, o]))
                        w.writerow(row)
    return path


def write_conditions(measurements: Measurements, path: str | Path) -> Path:
    """Write the conditions table: ``condition``, the inputs, ``init_<state>`` columns."""
    m, path = measurements, Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    init = list(m.initial)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["condition", *m.input_names, *(f"init_{s}" for s in init)])
        for c, cond in enumerate(m.conditions):
            w.writerow(
                [
                    cond,
                    *(_cell(v) for v in np.asarray(m.inputs)[c]),
                    *(_cell(m.initial[s][c]) for s in init),
                ]
            )
    return path
