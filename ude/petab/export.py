"""Writing PEtab: simulations and gradients of a check, and a twin as a PEtab problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ude.petab.problem import PetabProblem


def write_simulations(problem: PetabProblem, values: np.ndarray, path: str | Path) -> Path:
    """The measurement table with a ``simulation`` column instead of ``measurement``
    (``values (row,)`` in the table's order)."""
    import petab

    df = problem.measurements.table.copy()
    df = df.rename(columns={"measurement": "simulation"})
    df["simulation"] = values
    petab.write_simulation_df(df, path)
    return Path(path)


def write_gradient(mech: dict[str, float], nets: dict, path: str | Path) -> Path:
    """A TSV ``parameterId, value``: one row per estimated scalar parameter, then one per
    entry of each estimated network array, named ``net.layer.name[i,j,...]``."""
    import pandas as pd

    rows = list(mech.items())
    for net_id, layers in nets.items():
        for layer, arrays in layers.items():
            for name, arr in arrays.items():
                for idx in np.ndindex(arr.shape):
                    key = f"{net_id}.{layer}.{name}[{','.join(map(str, idx))}]"
                    rows.append((key, float(arr[idx])))
    pd.DataFrame(rows, columns=["parameterId", "value"]).to_csv(path, sep="\t", index=False)
    return Path(path)
