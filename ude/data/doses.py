"""Doses: the dosing table and the solver segments it cuts a time span into.

The table (``data.doses=doses.csv``) has the columns ``condition, time, state, amount`` and
optionally ``duration`` (``condition`` may be left out when the data have one condition).
A dose without a duration (empty or 0) is a bolus: ``amount`` is added to ``state`` at
``time``, a jump between two solver segments. A dose with a duration is an infusion: ``amount``
enters over ``duration`` at the constant rate ``amount / duration``, a piecewise-constant input
to d state/dt. Amounts are in the state's units.

A sample taken at the time of a dose is the state just before it (a trough, as a sample drawn
before the dose is given); the initial states are those before a dose at the first time. When
the first dose comes before the first sample, the data's time grid starts at that dose
(:func:`ude.data.read_measurements`): the initial states are the pre-dose ones.
:func:`segments` is the one place that turns doses into segments: the torch solve
(:meth:`ude.model.HybridODE.simulate`), the reference simulator
(:func:`ude.spec.simulate_spec`) and the twin's simulation all use it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ude.errors import UdeError

COLUMNS = ("condition", "time", "state", "amount", "duration")


@dataclass(frozen=True)
class Dose:
    """``amount`` into ``state`` at ``time``: a bolus, or over ``duration`` (an infusion)."""

    time: float
    state: str
    amount: float
    duration: float = 0.0

    @property
    def rate(self) -> float:
        """The infusion's rate (amount per time unit); 0 for a bolus."""
        return self.amount / self.duration if self.duration > 0 else 0.0

    def to_row(self) -> dict[str, float | str]:
        return {
            "time": self.time,
            "state": self.state,
            "amount": self.amount,
            "duration": self.duration,
        }


Schedule = tuple[Dose, ...]
"""The doses of one condition, in time order."""


@dataclass(frozen=True)
class Segment:
    """A piece ``[start, end]`` of a solve: ``jump (row, state)`` is added to the state at
    ``start`` (bolus doses), ``rate (row, state)`` to its derivative until ``end`` (infusions).
    """

    start: float
    end: float
    jump: np.ndarray
    rate: np.ndarray


def segments(
    schedules: Sequence[Sequence[Dose]], states: Sequence[str], t0: float, t1: float
) -> list[Segment]:
    """The segments that ``[t0, t1]`` is cut into by the doses of each row's schedule.

    Cuts are at every bolus and at the start and end of every infusion inside ``(t0, t1)``; a
    bolus at ``t0`` is the first segment's jump (after the initial state), one before ``t0``
    or at or after ``t1`` is left out (a solve that starts later starts from a state that holds
    it). An infusion that started before ``t0`` and is still running adds its rate from ``t0``.
    One segment without jumps or rates when no dose falls in the span.
    """
    n_rows, index = len(schedules), {s: i for i, s in enumerate(states)}
    cuts = {float(t0), float(t1)}
    for schedule in schedules:
        for d in schedule:
            for t in (d.time, d.time + d.duration) if d.duration > 0 else (d.time,):
                if t0 < t < t1:
                    cuts.add(float(t))
    bounds = sorted(cuts)
    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        jump = np.zeros((n_rows, len(states)))
        rate = np.zeros((n_rows, len(states)))
        for r, schedule in enumerate(schedules):
            for d in schedule:
                s = index[d.state]
                if d.duration > 0:
                    if d.time <= a < d.time + d.duration:
                        rate[r, s] += d.rate
                elif d.time == a:
                    jump[r, s] += d.amount
        out.append(Segment(a, b, jump, rate))
    return out


def dosed(schedule: Sequence[Dose], states: Sequence[str], times: np.ndarray) -> np.ndarray:
    """What the doses of one condition have put into each state by each of ``times``, before a
    dose at that very time: ``(time, state)`` (infusions pro rata)."""
    out = np.zeros((len(times), len(states)))
    index = {s: i for i, s in enumerate(states)}
    for d in schedule:
        if d.duration > 0:
            given = np.clip((times - d.time) / d.duration, 0.0, 1.0) * d.amount
        else:
            given = np.where(times > d.time, d.amount, 0.0)
        out[:, index[d.state]] += given
    return out


def has_doses(schedules: Sequence[Sequence[Dose]]) -> bool:
    return any(len(s) for s in schedules)


# -- the table ---------------------------------------------------------------------------------
def _fail(path: str, where: str | None, message: str, fix: str | None = None) -> UdeError:
    return UdeError(message, source=path, where=where, fix=fix)


def read_doses(
    path: str | Path,
    states: Sequence[str],
    horizons: dict[str, float],
    default_condition: str | None = None,
) -> dict[str, Schedule]:
    """The dosing table at ``path`` as each condition's schedule (conditions without doses
    are left out).

    Args:
        path: the CSV table (``condition, time, state, amount[, duration]``).
        states: the spec's states (a dose's ``state`` must be one).
        horizons: each condition the doses may name, with the last time a dose may be given
            (the condition's last measurement, or the end of a simulation).
        default_condition: the condition of every row when the table has no ``condition``
            column (None: the column is required).

    Every problem is one :class:`UdeError` naming the file, the line and the column: an unknown
    state, a negative time, a dose after its condition's horizon, a condition the data do not
    have, a negative amount or duration.
    """
    from ude.data.tables import _number, _read_rows  # the CSV rules of the data tables

    t = _read_rows(path, "dosing")
    extra = [c for c in t.header if c not in COLUMNS]
    if extra:
        raise _fail(
            t.path,
            f"column '{extra[0]}'",
            "is not a column of the dosing table",
            "columns: condition, time, state, amount[, duration]",
        )
    need = ["time", "state", "amount"]
    if t.column("condition") is None and default_condition is None:
        need.insert(0, "condition")
    for col in need:
        if t.column(col) is None:
            raise _fail(
                t.path,
                "header",
                f"no '{col}' column",
                "columns: condition, time, state, amount[, duration]",
            )
    out: dict[str, list[Dose]] = {}
    for line, cells in t.rows:

        def cell(col: str, cells: list[str] = cells) -> str:
            return cells[t.column(col)]

        where = f"line {line}"
        name = cell("condition") if t.column("condition") is not None else default_condition
        if not name:
            raise _fail(t.path, f"{where}, column 'condition'", "is empty, expected a name")
        if name not in horizons:
            raise _fail(
                t.path,
                f"{where}, column 'condition'",
                f"condition '{name}' is not in the data",
                "conditions: " + ", ".join(horizons),
            )
        time = _number(t.path, line, "time", cell("time"), required=True)
        if time < 0:
            raise _fail(
                t.path,
                f"{where}, column 'time'",
                f"negative time {time:g}: times count from the start, where the initial values "
                "apply",
            )
        if time > horizons[name]:
            raise _fail(
                t.path,
                f"{where}, column 'time'",
                f"the dose at time {time:g} is after the horizon of condition '{name}' "
                f"({horizons[name]:g})",
                "check the time unit, or remove the dose",
            )
        state = cell("state")
        if state not in states:
            raise _fail(
                t.path,
                f"{where}, column 'state'",
                f"'{state}' is not a state of the model",
                "states: " + ", ".join(states),
            )
        amount = _number(t.path, line, "amount", cell("amount"), required=True)
        if amount < 0:
            raise _fail(
                t.path, f"{where}, column 'amount'", f"negative amount {amount:g}", "amounts >= 0"
            )
        duration = 0.0
        if t.column("duration") is not None:
            duration = _number(t.path, line, "duration", cell("duration"))
            duration = 0.0 if math.isnan(duration) else duration
            if duration < 0:
                raise _fail(
                    t.path,
                    f"{where}, column 'duration'",
                    f"negative duration {duration:g}",
                    "leave it empty (or 0) for a bolus",
                )
        out.setdefault(name, []).append(Dose(time, state, amount, duration))
    return {c: tuple(sorted(d, key=lambda x: x.time)) for c, d in out.items()}


def write_doses(doses: dict[str, Sequence[Dose]], path: str | Path) -> Path:
    """Write the dosing table: ``condition, time, state, amount, duration``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for condition, schedule in doses.items():
            for d in schedule:
                w.writerow([condition, repr(d.time), d.state, repr(d.amount), repr(d.duration)])
    return path
