"""Conditions and measurements: synthetic data from the zoo, tables, the DataModule."""

from ude.data.datamodule import ConditionDataset, ConditionsDataModule, table_datamodule
from ude.data.measurements import Measurements, Truth
from ude.data.splits import Split, make_split
from ude.data.synthetic import simulate_measurements
from ude.data.tables import (
    ConditionsTable,
    read_conditions,
    read_measurements,
    write_conditions,
    write_long,
    write_wide,
)

__all__ = [
    "ConditionDataset",
    "ConditionsDataModule",
    "ConditionsTable",
    "Measurements",
    "Split",
    "Truth",
    "make_split",
    "read_conditions",
    "read_measurements",
    "simulate_measurements",
    "table_datamodule",
    "write_conditions",
    "write_long",
    "write_wide",
]
