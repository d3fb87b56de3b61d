"""Measurements: time courses of observables under one or more conditions."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ude.data.doses import Schedule
from ude.spec.model_spec import ModelSpec


@dataclass
class Truth:
    """Ground truth behind synthetic data: the true spec, initial states ``(condition, state)``
    and the true form of each missing term."""

    spec: ModelSpec
    initial: np.ndarray
    missing: dict = field(default_factory=dict)


@dataclass
class Measurements:
    """Time courses on one shared time grid (the union of all sampling times).

    Shapes: ``times (time,)``; ``values (condition, time, replicate, observable)`` with NaN where
    nothing was measured; ``sigma`` like ``values`` or None (noise is then learned);
    ``inputs (condition, input)``; ``initial`` maps a state to known initial values
    ``(condition,)`` (NaN: unknown); ``doses`` maps a condition to its doses
    (:mod:`ude.data.doses`; conditions without doses are left out); ``state_scale`` maps
    states the data do not show to their typical size (a reference model's simulation), which
    scales the networks that see or change them; ``initial_scale`` maps states whose unknown
    initial values are learned on a scale of their own to ``(scale, lower, upper)``: a PEtab
    ``init_`` parameter's ``log10`` scale and bounds (:mod:`ude.model.initial_scale`).
    """

    times: np.ndarray
    values: np.ndarray
    observables: list[str]
    conditions: list[str]
    sigma: np.ndarray | None = None
    input_names: list[str] = field(default_factory=list)
    inputs: np.ndarray | None = None
    initial: dict[str, np.ndarray] = field(default_factory=dict)
    truth: Truth | None = None
    source: str = "data"
    doses: dict[str, Schedule] = field(default_factory=dict)
    state_scale: dict[str, float] = field(default_factory=dict)
    initial_scale: dict[str, tuple[str, float | None, float | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.inputs is None:
            self.inputs = np.zeros((len(self.conditions), len(self.input_names)))

    @property
    def n_conditions(self) -> int:
        return len(self.conditions)

    def starting_at(self, time: float) -> Measurements:
        """These measurements on a grid that starts at ``time`` (before the first sample: a
        time with nothing measured, where the initial states then apply); themselves when
        the grid starts there already."""
        if time >= self.times[0]:
            return self
        pad = lambda a: np.concatenate([np.full_like(a[:, :1], np.nan), a], axis=1)  # noqa: E731
        return replace(
            self,
            times=np.concatenate([[float(time)], self.times]),
            values=pad(self.values),
            sigma=None if self.sigma is None else pad(self.sigma),
        )

    def until(self, time: float) -> Measurements:
        """These measurements up to ``time`` (inclusive): the grid's earlier times and their
        values; doses, inputs and initial states as they are."""
        keep = self.times <= time
        return replace(
            self,
            times=self.times[keep],
            values=self.values[:, keep],
            sigma=None if self.sigma is None else self.sigma[:, keep],
        )

    def schedules(self) -> list[Schedule]:
        """Each condition's doses, in the order of ``conditions``."""
        return [self.doses.get(c, ()) for c in self.conditions]

    def horizons(self) -> dict[str, float]:
        """Each condition's last measured time: the latest time a dose may be given."""
        measured = ~np.isnan(self.values).all(axis=(2, 3))  # (condition, time)
        return {
            c: float(self.times[np.flatnonzero(measured[i])[-1]])
            for i, c in enumerate(self.conditions)
            if measured[i].any()
        }

    @property
    def mask(self) -> np.ndarray:
        """True where a value was measured, shape of ``values``."""
        return ~np.isnan(self.values)

    def observable_scale(self) -> np.ndarray:
        """Typical magnitude of each observable ``(observable,)``: RMS of measured values."""
        v = self.values.reshape(-1, len(self.observables))
        scale = np.sqrt(np.nanmean(v**2, axis=0))
        return np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)

    def first_observed(self) -> np.ndarray:
        """First measured value of each observable per condition ``(condition, observable)``,
        averaged over replicates; NaN where a series has no value."""
        out = np.full((self.n_conditions, len(self.observables)), np.nan)
        for c in range(self.n_conditions):
            for o in range(len(self.observables)):
                series = self.values[c, :, :, o]
                rows = np.where(~np.isnan(series).all(axis=1))[0]
                if rows.size:
                    out[c, o] = np.nanmean(series[rows[0]])
        return out
