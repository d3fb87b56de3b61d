"""Where a first-order swap's coefficients are matched, where the training missed the data.

    OMP_NUM_THREADS=1 python bench/swap_path.py [--system yeast_glycolysis] [--noise 0.3]
        [--seed 0] [--n-times 30]

The benchmark's cell (30 time points, one condition) is trained as ``python train.py`` trains
it and distilled with the product's defaults. Where the trained model's path misses the data
(``screened_on: data``), the screen runs along the data's smoothed path, and the first-order
swaps (each target's inputs alone and the constant) take their coefficients along the best
refitted twin's trajectory (``swap_path`` in ``ude/distill/distiller.py``). Printed: the
twin, the oracle's verdict, each swap's starting coefficients and its criterion; for each
target, each first-order term's coefficient matched alone along the data's smoothed path
(where the swaps took it from before) and along the chosen twin's refitted trajectory; and,
where the twin is not the truth, the oracle's refits of the truth from the screen's solution
(the data's path: where a swap of the true term started before), from the twin's values and
from the truth's own.

Nothing is asserted: the figures are printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ude.benchmark.methods import train_as_train_py, ude_config  # noqa: E402
from ude.benchmark.scenario import Scenario, build_problem  # noqa: E402
from ude.distill.cli import make_distiller  # noqa: E402
from ude.distill.integral import data_path, integral_problems  # noqa: E402
from ude.distill.swaps import first_order  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="yeast_glycolysis")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-times", type=int, default=30)  # the standard suite's base
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = build_problem(
        Scenario(system=args.system, seed=args.seed, noise=args.noise, n_times=args.n_times)
    )
    data = problem.measurements
    cfg = ude_config(problem, [])
    start = time.process_time()
    model, _ = train_as_train_py(cfg, problem.known, data)
    distiller = make_distiller(cfg.distill)
    found = distiller.fit(model, data)
    print(f"trained and distilled in {time.process_time() - start:.0f} s of CPU")
    print(f"screened on the {found.screened_on}; twin: {found.twin.discovered}")
    oracle = found.oracle or {}
    print(f"oracle: {oracle.get('verdict')}; the truth refitted from {oracle.get('starts')}")
    for s in found.path:
        if s.step in {"swap", "reswap"}:
            started = {
                t: {found.terms[t][j].name: round(float(c[j]), 4) for j in np.flatnonzero(c)}
                for t, c in s.candidate.coef.items()
                if np.any(c)
            }
            print(f"  {s.step} started at {started}: criterion {s.criterion:.1f}")
    print(f"  chosen: criterion {found.chosen.criterion:.1f}")
    if found.screened_on != "data":
        print("screened on the trained model: the swaps match along its path, as before")
        return
    on_data = data_path(data, model.spec.states)
    libraries = distiller.libraries(model)
    grid = distiller._n_grid()
    along_data = integral_problems(model, data, libraries, n_grid=grid, path=on_data[0])
    along_twin = integral_problems(model, data, libraries, found.model, grid)
    for target, library in libraries.items():
        for j, term in enumerate(library.terms_):
            if first_order(term):
                d = along_data[target].lstsq([j])[0][j]
                t = along_twin[target].lstsq([j])[0][j]
                print(
                    f"  d{target}/dt: {term.name} matched along the data {d:.4g}, "
                    f"along the twin {t:.4g}"
                )


if __name__ == "__main__":
    main()
