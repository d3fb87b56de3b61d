"""Training schedules on the stiff systems: does a longer warm start with a short trajectory
polish fit as well as the benchmark's schedule?

    python bench/stiff_schedule.py   # a few minutes on 2 cores

On the benchmark's base scenario of Goldbeter and yeast glycolysis (one condition, 30 times,
5 % noise), with rodas5p, trains the hybrid model (one cycle of trajectory fitting, without
the rescue or the step-backs: ``stiff.ONE_CYCLE``) with:

- the benchmark's schedule: 500 warm-start (gradient matching) steps, then 300 epochs of
  trajectory fitting;
- 3000 warm-start steps, then 30 epochs;
- 3000 warm-start steps and no trajectory fitting;

and prints the CPU seconds, the normalised trajectory MSE on the data and the network's
relative RMSE against the true missing term along the true trajectory.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stiff import ONE_CYCLE  # noqa: E402 - bench/stiff.py, beside this script

from ude.benchmark.scenario import Scenario, build_problem  # noqa: E402
from ude.fit import fit  # noqa: E402
from ude.model import Solver  # noqa: E402

SCHEDULES = [(500, 300), (3000, 30), (3000, 0)]


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'system':<18}{'warm start':>11}{'epochs':>8}{'cpu s':>8}{'data nmse':>11}  term err")
    for name in ("goldbeter", "yeast_glycolysis"):
        problem = build_problem(Scenario(system=name, n_times=30))
        for steps, epochs in SCHEDULES:
            start = time.process_time()
            result = fit(
                problem.known,
                problem.measurements,
                solver=Solver(problem.solver),
                max_epochs=max(epochs, 1),
                warm_start_steps=steps,
                seed=0,
                **ONE_CYCLE,
                trainer_kwargs={"limit_train_batches": 1.0 if epochs else 0.0},
            )
            seconds = time.process_time() - start
            truth = result.metrics.get("truth", {}).get("missing_term_rel_rmse", {})
            terms = ", ".join(f"{k} {v:.1%}" for k, v in truth.items())
            print(
                f"{name:<18}{steps:>11d}{epochs:>8d}{seconds:>8.1f}"
                f"{result.metrics['train_nmse']:>11.3g}  {terms}",
                flush=True,
            )


if __name__ == "__main__":
    main()
