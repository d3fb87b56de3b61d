"""Where a benchmark cell's training time goes: the warm start against the trajectory epochs.

    OMP_NUM_THREADS=1 python bench/training_split.py [--cells goldbeter:0.5 seir:0] [--torch]

Each cell is ``system:unobserved`` (the share of species the data do not measure; seed 0, the
benchmark's base scenario otherwise), trained as ``python train.py`` trains it
(:func:`ude.benchmark.methods.train_as_train_py`). Prints the CPU seconds of the whole
training; of its warm start (:func:`ude.train.warm_start.gradient_matching`: gradient matching
on the smoothed data, with the latent species' paths integrated by Heun's method along the
smoothed grid, :class:`ude.train.warm_start.LatentPaths`), with its steps and how much of it
the latent paths' integration and backward pass take; and of the rest (the trajectory epochs,
solved in the compiled kernels for the stiff systems). Issue 14's target is each cell within 5
minutes; this says which part of a cell with latent species to make cheaper.

The latent paths run compiled (:mod:`ude.train.latent_kernels`); ``--torch`` trains each cell a
second time with them in torch (the reference path, ``LatentPaths.compiled`` off) and prints
the ratio of the two trainings' CPU seconds.
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

import ude.train.module as training_module  # noqa: E402
from ude.benchmark.methods import train_as_train_py, ude_config  # noqa: E402
from ude.benchmark.scenario import Scenario, build_problem  # noqa: E402
from ude.train.warm_start import LatentPaths  # noqa: E402


class Split:
    """Within the block, CPU seconds of the warm start, and of its latent paths' integrations
    and its backward passes."""

    def __init__(self):
        self.warm = self.paths = self.backward = 0.0
        self.steps = self.integrations = 0

    def __enter__(self):
        self._saved = (training_module.gradient_matching, LatentPaths.states)
        matching, states, backward = *self._saved, torch.Tensor.backward
        split = self

        def timed(fn, field, count=None):
            def run(*args, **kwargs):
                start = time.process_time()
                try:
                    return fn(*args, **kwargs)
                finally:
                    setattr(split, field, getattr(split, field) + time.process_time() - start)
                    if count:
                        setattr(split, count, getattr(split, count) + 1)

            return run

        def warm_start(*args, **kwargs):
            torch.Tensor.backward = timed(backward, "backward", "steps")
            try:
                return timed(matching, "warm")(*args, **kwargs)
            finally:
                torch.Tensor.backward = backward

        training_module.gradient_matching = warm_start
        LatentPaths.states = timed(states, "paths", "integrations")
        return self

    def __exit__(self, *exc):
        training_module.gradient_matching, LatentPaths.states = self._saved


def one(system: str, unobserved: float, compiled: bool = True) -> float:
    """Train the cell and print where its CPU seconds went; ``compiled``: the latent paths in
    the compiled kernels (else in torch). Returns the training's CPU seconds."""
    problem = build_problem(Scenario(system=system, seed=0, unobserved=unobserved, n_times=30))
    data = problem.measurements
    latent = [s for s in problem.known.states if s not in data.observables]
    cfg = ude_config(problem, [])
    init = LatentPaths.__init__

    def paths_in(self, *args):
        init(self, *args)
        self.compiled = self.compiled and compiled

    LatentPaths.__init__ = paths_in
    try:
        with Split() as split:
            start = time.process_time()
            _, metrics = train_as_train_py(cfg, problem.known, data)
            total = time.process_time() - start
    finally:
        LatentPaths.__init__ = init
    rest = total - split.warm
    latent_share = (split.paths + split.backward) / split.warm if split.warm else float("nan")
    print(
        f"{system:>17} {unobserved:>4} {'compiled' if compiled else 'torch':>8} | latent "
        f"{','.join(latent) or '-':<10} | training "
        f"{total:7.1f} s | warm start {split.warm:7.1f} s ({split.warm / total:4.0%}; "
        f"{split.steps} steps, {split.integrations} latent-path integrations; those and the "
        f"backward passes {latent_share:4.0%} of it) | the rest {rest:6.1f} s "
        f"({metrics.get('epochs')} epochs)",
        flush=True,
    )
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["goldbeter:0.5", "seir:0"])
    parser.add_argument(
        "--torch", action="store_true", help="train each cell again with the paths in torch"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    for cell in args.cells:
        system, _, share = cell.partition(":")
        compiled = one(system, float(share or 0))
        if args.torch:
            reference = one(system, float(share or 0), compiled=False)
            print(f"{'':>17} training in torch / compiled: {reference / compiled:.1f}x")


if __name__ == "__main__":
    main()
