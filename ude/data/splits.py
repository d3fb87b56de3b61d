"""Train/held-out splits: whole conditions and/or a final time window."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ude.data.measurements import Measurements, Truth
from ude.errors import UdeError


@dataclass
class Split:
    """Which measured entries are fitted and which are held out.

    ``train`` and ``held_out`` are boolean masks shaped like ``values``
    ``(condition, time, replicate, observable)``; they never overlap.
    """

    train: np.ndarray
    held_out: np.ndarray
    val_conditions: list[str] = field(default_factory=list)
    cut: float | None = None

    @property
    def train_conditions(self) -> list[int]:
        """Indices of conditions with at least one training entry."""
        return [int(c) for c in np.where(self.train.any(axis=(1, 2, 3)))[0]]

    @property
    def held_out_conditions(self) -> list[int]:
        """Indices of conditions with at least one held-out entry."""
        return [int(c) for c in np.where(self.held_out.any(axis=(1, 2, 3)))[0]]

    @property
    def has_held_out(self) -> bool:
        return bool(self.held_out.any())

    def masked(self, measurements: Measurements) -> Measurements:
        """What a fit may see: ``measurements`` with every held-out entry missing (NaN), all
        conditions and times kept. A condition without training entries starts from its first
        measured values, given as known initial states (``initial``) as a conditions
        table's ``init_<state>`` would be: its forecast starts there."""
        m = measurements
        values = np.where(self.train, m.values, np.nan)
        sigma = None if m.sigma is None else np.where(self.train, m.sigma, np.nan)
        initial = {k: np.array(v, dtype=float) for k, v in m.initial.items()}
        unseen = [c for c in range(m.n_conditions) if c not in self.train_conditions]
        if unseen:
            first = m.first_observed()
            for j, o in enumerate(m.observables):
                given = initial.setdefault(o, np.full(m.n_conditions, np.nan))
                for c in unseen:
                    if np.isnan(given[c]):
                        given[c] = first[c, j]
                if np.isnan(given).all():
                    del initial[o]
        return replace(m, values=values, sigma=sigma, initial=initial)

    def training_data(self, measurements: Measurements) -> tuple[Measurements, list[int]]:
        """The training entries alone, for a fit that must not see the rest (the
        distillation): held-out entries missing, the conditions without training entries
        dropped, and the times after the last training entry cut. Returns the data and the
        indices of the kept conditions in ``measurements``."""
        m = measurements
        keep = self.train_conditions
        times = np.flatnonzero(self.train.any(axis=(0, 2, 3)))
        t = slice(0, int(times[-1]) + 1)

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.where(self.train, a, np.nan)[keep][:, t]

        truth = m.truth
        if truth is not None:
            truth = Truth(truth.spec, np.asarray(truth.initial)[keep], dict(truth.missing))
        data = replace(
            m,
            times=m.times[t],
            values=take(m.values),
            sigma=take(m.sigma),
            conditions=[m.conditions[c] for c in keep],
            inputs=np.asarray(m.inputs)[keep],
            initial={k: np.asarray(v)[keep] for k, v in m.initial.items()},
            truth=truth,
        )
        return data, keep


def make_split(
    measurements: Measurements,
    val_conditions: Sequence[str] | None = None,
    val_fraction: float | None = None,
    val_after: float | None = None,
) -> Split:
    """Hold out the conditions named in ``val_conditions`` and/or every time after a cut:
    ``val_after`` (a time) or the last ``val_fraction`` of the time span."""
    m = measurements
    measured = m.mask
    val_conditions = list(val_conditions or [])
    unknown = [c for c in val_conditions if c not in m.conditions]
    if unknown:
        raise UdeError(
            f"'{unknown[0]}' is not a condition of the data",
            source="data.val_conditions",
            fix="conditions: " + ", ".join(m.conditions),
        )
    if val_fraction is not None and val_after is not None:
        raise UdeError(
            "give val_fraction or val_after, not both", source="data.val_fraction/data.val_after"
        )
    t0, t1 = float(m.times[0]), float(m.times[-1])
    cut = None
    if val_fraction is not None:
        if isinstance(val_fraction, bool) or not 0 < float(val_fraction) < 1:
            raise UdeError(
                f"got {val_fraction!r}, expected a number in (0, 1)", source="data.val_fraction"
            )
        cut = t1 - float(val_fraction) * (t1 - t0)
    if val_after is not None:
        if isinstance(val_after, bool) or not t0 < float(val_after) < t1:
            raise UdeError(
                f"got {val_after!r}, expected a time inside the data's span ({t0:g}, {t1:g})",
                source="data.val_after",
            )
        cut = float(val_after)
    held = np.zeros_like(measured)
    for c in val_conditions:
        held[m.conditions.index(c)] = True
    if cut is not None:
        held[:, m.times > cut] = True
    held &= measured
    train = measured & ~held
    if not train.any():
        raise UdeError(
            "nothing is left to train on",
            source="data.val_conditions/data.val_fraction/data.val_after",
            fix="hold out fewer conditions or a shorter time window",
        )
    if (val_conditions or cut is not None) and not held.any():
        raise UdeError(
            f"nothing is held out (no measurement after time {cut:g})"
            if cut is not None
            else "nothing is held out",
            source="data.val_fraction/data.val_after",
        )
    return Split(train=train, held_out=held, val_conditions=val_conditions, cut=cut)
