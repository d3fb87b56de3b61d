"""The Lightning DataModule: one item per condition, batched into one solve."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ude.data.measurements import Measurements
from ude.data.splits import Split, make_split
from ude.data.tables import read_measurements
from ude.spec.model_spec import ModelSpec


class ConditionDataset(Dataset):
    """Item ``i``: condition index, ``values (time, replicate, observable)`` (NaN as 0),
    ``mask`` (True where measured, or where ``mask`` selects) and ``sigma`` (0 where unknown).

    Args:
        measurements: the data.
        conditions: condition indices served (default: all).
        mask: entries to serve ``(condition, time, replicate, observable)`` (default: all
            measured ones).
    """

    def __init__(
        self,
        measurements: Measurements,
        conditions: list[int] | None = None,
        mask: np.ndarray | None = None,
    ):
        self.indices = list(range(measurements.n_conditions)) if conditions is None else conditions
        values = measurements.values
        measured = ~np.isnan(values)
        self.mask = torch.from_numpy(measured if mask is None else measured & mask)
        self.values = torch.from_numpy(np.nan_to_num(values, nan=0.0))
        sigma = measurements.sigma
        self.sigma = torch.from_numpy(
            np.nan_to_num(sigma, nan=0.0) if sigma is not None else np.zeros_like(values)
        )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        c = self.indices[i]
        return {
            "condition": torch.tensor(c),
            "values": self.values[c],
            "mask": self.mask[c],
            "sigma": self.sigma[c],
        }


class ConditionsDataModule(pl.LightningDataModule):
    """Serves the conditions of ``measurements``; ``batch_size=None`` puts all in one batch.

    Held-out data (``val_conditions``: whole conditions by name; ``val_fraction``: the last
    fraction of the time span; ``val_after``: every time after it) are left out of training and
    served for validation; without them, validation sees the training data. Under DDP,
    Lightning's distributed sampler splits the conditions across processes.
    """

    def __init__(
        self,
        measurements: Measurements,
        batch_size: int | None = None,
        val_conditions: Sequence[str] | None = None,
        val_fraction: float | None = None,
        val_after: float | None = None,
    ):
        super().__init__()
        self.measurements = measurements
        self.batch_size = batch_size
        self.split: Split = make_split(
            measurements, list(val_conditions or []), val_fraction, val_after
        )

    def _loader(self, data: ConditionDataset, shuffle: bool) -> DataLoader:
        size = self.batch_size or len(data)
        return DataLoader(data, batch_size=size, shuffle=shuffle and size < len(data))

    def train_dataloader(self) -> DataLoader:
        s = self.split
        return self._loader(
            ConditionDataset(self.measurements, s.train_conditions, s.train), shuffle=True
        )

    def val_dataloader(self) -> DataLoader:
        s = self.split
        if not s.has_held_out:
            return self._loader(ConditionDataset(self.measurements), shuffle=False)
        return self._loader(
            ConditionDataset(self.measurements, s.held_out_conditions, s.held_out), shuffle=False
        )


def table_datamodule(
    path: str | Path,
    spec: str | ModelSpec | None = None,
    conditions: str | Path | None = None,
    format: str = "auto",
    time_column: str = "time",
    batch_size: int | None = None,
    val_conditions: Sequence[str] | None = None,
    val_fraction: float | None = None,
    val_after: float | None = None,
) -> ConditionsDataModule:
    """A :class:`ConditionsDataModule` over a CSV table (see :func:`read_measurements`)."""
    measurements = read_measurements(path, spec, conditions, format, time_column)
    return ConditionsDataModule(measurements, batch_size, val_conditions, val_fraction, val_after)
