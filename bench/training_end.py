"""Where each benchmark cell's training ends: on which epoch's parameters, and with which
initial states below zero, found by training the cells alone, in one run.

    OMP_NUM_THREADS=1 python bench/training_end.py seir lotka_volterra --out ends.jsonl

Each `ude` cell of the `standard` suite of the named systems is trained as the benchmark trains
it (``python train.py``'s defaults, the cell's scenario and library), without the
distillation. Printed per cell, one JSON line (also appended to ``--out``, which a killed run
resumes from): the training NMSE it ends on and, where its last step fitted the training data
worse than an earlier one (:meth:`ude.train.module.UDEModule.finish_training`), the epoch whose
parameters it ended on with both MSEs; and the initial states that the distillation moves up
to zero, ``[condition, state, trained value]`` (a concentration's that training left below
zero: :func:`ude.distill.distiller.screen_start`). A cell whose training ends on its last
parameters is trained as before training kept its best fit (3dacfef), and one with no initial
state below zero is distilled as before the screen started at zero (the thirty-second
session); the others need running again. The summary counts both per system.

Nothing is asserted: the figures are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")

from ude.benchmark.methods import train_as_train_py, ude_config  # noqa: E402
from ude.benchmark.scenario import build_problem  # noqa: E402
from ude.benchmark.suite import expand  # noqa: E402
from ude.distill.distiller import screen_start  # noqa: E402
from ude.distill.sampling import TrajectorySampler  # noqa: E402

SUITE = ROOT / "ude" / "benchmark" / "conf" / "suite" / "standard.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("systems", nargs="+")
    parser.add_argument("--out", type=Path, default=None, help="JSON lines; resumed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    suite = yaml.safe_load(SUITE.read_text())
    rows = []
    if args.out is not None and args.out.exists():
        rows = [json.loads(line) for line in args.out.read_text().splitlines() if line]
    done = {row["id"] for row in rows}
    for cell in expand(args.systems, ["ude"], suite["axes"], suite["base"], suite["seeds"]):
        if cell.id in done:
            continue
        problem = build_problem(cell.scenario)
        cfg = ude_config(problem)
        start = time.perf_counter()
        model, metrics = train_as_train_py(cfg, problem.known, problem.measurements)
        seconds = time.perf_counter() - start
        trained = model.initial.detach().cpu().numpy()
        samples = TrajectorySampler().sample(model, problem.measurements.times)
        moved = np.argwhere(screen_start(model, problem.measurements, samples) != trained)
        states = list(model.spec.states)
        row = {
            "id": cell.id,
            "system": cell.scenario.system,
            "axis": cell.axis,
            "value": None if cell.axis == "base" else getattr(cell.scenario, cell.axis),
            "train_nmse": metrics.get("train_nmse"),
            "epochs": metrics.get("epochs"),
            "ended_on_best": metrics.get("ended_on_best"),
            "below_zero": [[int(c), states[i], float(trained[c, i])] for c, i in moved],
            "seconds": round(seconds, 1),
        }
        print(json.dumps(row), flush=True)
        if args.out is not None:
            with args.out.open("a") as out:
                out.write(json.dumps(row) + "\n")
        rows.append(row)
    ended = Counter(row["system"] for row in rows if row["ended_on_best"])
    below = Counter(row["system"] for row in rows if row.get("below_zero"))
    cells = Counter(row["system"] for row in rows)
    for system in sorted(cells):
        print(
            f"{system}: of {cells[system]} cells, {ended[system]} end on an earlier epoch, "
            f"{below[system]} with an initial state below zero"
        )


if __name__ == "__main__":
    main()
