"""Which benchmark cells' training ends on an earlier epoch's parameters: the cells a change of
training's end moves, found by training them alone, in one run.

    OMP_NUM_THREADS=1 python bench/training_end.py seir lotka_volterra --out ends.jsonl

Each `ude` cell of the `standard` suite of the named systems is trained as the benchmark trains
it (``python train.py``'s defaults, the cell's scenario and library), without the
distillation. Printed per cell, one JSON line (also appended to ``--out``, which a killed run
resumes from): the training NMSE it ends on and, where its last step fitted the training data
worse than an earlier one (:meth:`ude.train.module.UDEModule.finish_training`), the epoch whose
parameters it ended on with both MSEs. A cell whose training ends on its last parameters is
trained as before the training kept its best fit, so its distillation and row are unchanged;
the others need running again. The summary counts them per system.

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

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")

from ude.benchmark.libraries import distill_library  # noqa: E402
from ude.benchmark.methods import composed_config, train_as_train_py  # noqa: E402
from ude.benchmark.scenario import build_problem  # noqa: E402
from ude.benchmark.suite import expand  # noqa: E402

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
        cfg = composed_config(problem, [])
        library = distill_library(problem.library)
        if library is not None:
            cfg.distill.library = library
        start = time.perf_counter()
        _, metrics = train_as_train_py(cfg, problem.known, problem.measurements)
        row = {
            "id": cell.id,
            "system": cell.scenario.system,
            "axis": cell.axis,
            "value": None if cell.axis == "base" else getattr(cell.scenario, cell.axis),
            "train_nmse": metrics.get("train_nmse"),
            "epochs": metrics.get("epochs"),
            "ended_on_best": metrics.get("ended_on_best"),
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(json.dumps(row), flush=True)
        if args.out is not None:
            with args.out.open("a") as out:
                out.write(json.dumps(row) + "\n")
        rows.append(row)
    ended = Counter(row["system"] for row in rows if row["ended_on_best"])
    cells = Counter(row["system"] for row in rows)
    for system in sorted(cells):
        print(f"{system}: {ended[system]} of {cells[system]} cells end on an earlier epoch")


if __name__ == "__main__":
    main()
