"""Conditions and measurements: synthetic data from the zoo, tables, the DataModule."""

from ude.data.datamodule import ConditionDataset, ConditionsDataModule
from ude.data.measurements import Measurements, Truth
from ude.data.synthetic import simulate_measurements

__all__ = [
    "ConditionDataset",
    "ConditionsDataModule",
    "Measurements",
    "Truth",
    "simulate_measurements",
]
