"""The Lightning DataModule: one item per condition, batched into one solve."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ude.data.measurements import Measurements


class ConditionDataset(Dataset):
    """Item ``i``: condition index, ``values (time, replicate, observable)`` (NaN as 0),
    ``mask`` (True where measured) and ``sigma`` (0 where unknown)."""

    def __init__(self, measurements: Measurements, conditions: list[int] | None = None):
        self.indices = list(range(measurements.n_conditions)) if conditions is None else conditions
        values = measurements.values
        self.mask = torch.from_numpy(~np.isnan(values))
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

    Under DDP, Lightning's distributed sampler splits the conditions across processes.
    """

    def __init__(self, measurements: Measurements, batch_size: int | None = None):
        super().__init__()
        self.measurements = measurements
        self.batch_size = batch_size

    def _loader(self, shuffle: bool) -> DataLoader:
        data = ConditionDataset(self.measurements)
        size = self.batch_size or len(data)
        return DataLoader(data, batch_size=size, shuffle=shuffle and size < len(data))

    def train_dataloader(self) -> DataLoader:
        return self._loader(shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(shuffle=False)
