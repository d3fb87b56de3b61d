"""The selection's refits in threads against one at a time, on one trained network, in one run.

    OMP_NUM_THREADS=1 python bench/selection_threads.py       # Goldbeter, 4 conditions
    OMP_NUM_THREADS=1 python bench/selection_threads.py --system yeast_glycolysis --conditions 8

The network of the benchmark's cell (5 % noise, seed 0) is trained once as ``python train.py``
trains it; then it is distilled with ``distill.distiller.selector.workers`` at 1 and at each
``--workers`` (default: 2), everything else the product's defaults. Printed per setting: the
wall seconds of the selection (``selection_seconds``) and of the whole distillation, their
ratio to one worker, and whether the selection's path (every refitted candidate's criterion,
in order) and the twin are the same as with one worker. A stiff system's refits run the
compiled Rodas5P kernels, which release the GIL; a non-stiff one's run torch, which holds it.
Run it on an otherwise idle machine: the threads share its cores with everything else.

Nothing is asserted: the figures are printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")

from ude.benchmark.methods import composed_config, train_as_train_py  # noqa: E402
from ude.benchmark.scenario import Scenario, build_problem  # noqa: E402
from ude.distill.cli import make_distiller  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="goldbeter")
    parser.add_argument("--conditions", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = build_problem(Scenario(args.system, conditions=args.conditions, seed=0))
    start = time.perf_counter()
    model, _ = train_as_train_py(composed_config(problem, []), problem.known, problem.measurements)
    print(f"{args.system}, {args.conditions} conditions: trained in "
          f"{time.perf_counter() - start:.0f} s; {os.cpu_count()} CPUs", flush=True)  # fmt: skip
    print("| workers | selection, s | × one | distillation, s | × one | same path and twin |")
    print("|---|---|---|---|---|---|")
    base = None
    for workers in [1, *args.workers]:
        cfg = composed_config(problem, [f"distill.distiller.selector.workers={workers}"])
        start = time.perf_counter()
        result = make_distiller(cfg.distill).fit(model, problem.measurements)
        total = time.perf_counter() - start
        selection = result.timings["selection_seconds"]
        path = [(r["terms"], r["criterion"]) for r in result.path_rows()]
        twin = {k: str(v) for k, v in result.twin.discovered.items()}
        base = base or (selection, total, path, twin)
        same = "yes" if (path, twin) == base[2:] else "NO"
        print(f"| {workers} | {selection:.1f} | {base[0] / selection:.2f} | {total:.1f} | "
              f"{base[1] / total:.2f} | {same} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
