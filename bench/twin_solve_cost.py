"""What one compiled Rodas5P solve of a twin costs, forward and adjoint: the unit of the
distillation's refits, which are most of the slowest benchmark cells' time.

    OMP_NUM_THREADS=1 python bench/twin_solve_cost.py [--systems goodwin goldbeter ...]

Each system's true model (a twin: no networks) over the benchmark's base scenario (30 time
points, seed 0), solved and differentiated by :func:`ude.model.rodas_kernels.integrate` and
:func:`ude.model.rodas_kernels.adjoint` at rtol 1e-6, as the selection's scoring refits do.
Prints the CPU time of one forward + adjoint (best of 5 rounds of 100), the accepted steps,
the time per step, and the forward (recording its steps) and the adjoint apart. Run it on two
commits to compare them: ``PYTHONPATH=WORKTREE python bench/twin_solve_cost.py`` takes the
worktree's ``ude``.

``--conditions N`` (N > 1) solves the benchmark's N-condition scenario instead, each condition
with its own steps as the refits do (:func:`ude.model.rodas_kernels.integrate_each` and
:func:`~ude.model.rodas_kernels.adjoint_each`), one condition after the other and in threads
(:mod:`ude.threads`, one per CPU), and prints the wall and CPU time of each (best of 5 rounds
of 20) and whether the two gave the same states and cotangents to the bit.
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import numpy as np

from ude import simulate_measurements, threads
from ude.benchmark.scenario import Scenario, build_problem
from ude.model import rodas_kernels
from ude.spec.derivatives import compiled_derivatives


def _clocks(run, rounds: int, repeats: int) -> tuple[float, float]:
    """The least wall and CPU seconds of one call over ``rounds`` rounds of ``repeats``
    calls (the first call before them: compiled, or loaded from the cache)."""
    run()
    wall = cpu = float("inf")
    for _ in range(rounds):
        w, c = time.perf_counter(), time.process_time()
        run()
        wall = min(wall, (time.perf_counter() - w) / repeats)
        cpu = min(cpu, (time.process_time() - c) / repeats)
    return wall, cpu


def _true_model(data, n_conditions: int) -> tuple:
    """``(y0, times, ctx, tapes)`` of the true model of ``data`` over its first
    ``n_conditions`` conditions, as the kernels take them."""
    spec = data.truth.spec
    derivatives = compiled_derivatives(spec.known_rhs(), spec.symbols, len(spec.states))
    values = [spec.parameters[p].value for p in spec.symbols[len(spec.states) :]]
    y0 = np.ascontiguousarray(data.truth.initial[:n_conditions], dtype=float)
    ctx = np.repeat(np.array([values], dtype=float), y0.shape[0], axis=0)
    times = np.ascontiguousarray(data.times, dtype=float)
    return y0, times, ctx, rodas_kernels.tapes(derivatives)


def one(system: str) -> None:
    data = simulate_measurements(system, noise=0.05, n_times=30, seed=0)
    y0, times, ctx, tapes = _true_model(data, 1)
    steps = []

    def solve_and_adjoint():
        for _ in range(100):
            r = rodas_kernels.integrate(y0, times, ctx, *tapes, 1e-6, 1e-8, 100_000, True)
            rodas_kernels.adjoint(np.ones_like(r[0]), *r[2:8], ctx, *tapes)
        steps.append(int(r[11][0]))

    record = rodas_kernels.integrate(y0, times, ctx, *tapes, 1e-6, 1e-8, 100_000, True)
    grad = np.ones_like(record[0])

    def forward():
        for _ in range(100):
            rodas_kernels.integrate(y0, times, ctx, *tapes, 1e-6, 1e-8, 100_000, True)

    def adjoint():
        for _ in range(100):
            rodas_kernels.adjoint(grad, *record[2:8], ctx, *tapes)

    solve = _clocks(solve_and_adjoint, 5, 100)[1]
    forward_only, adjoint_only = _clocks(forward, 5, 100)[1], _clocks(adjoint, 5, 100)[1]
    print(
        f"{system:>17} | forward + adjoint {solve * 1e3:7.3f} ms | {steps[-1]:5d} steps | "
        f"{solve / steps[-1] * 1e6:6.2f} us a step | forward {forward_only * 1e3:7.3f} ms, "
        f"adjoint {adjoint_only * 1e3:7.3f} ms",
        flush=True,
    )


def conditions(system: str, n: int) -> None:
    data = build_problem(Scenario(system, n_times=30, conditions=n)).measurements
    y0, times, ctx, tapes = _true_model(data, n)
    outputs = []

    def solve_and_adjoint():
        for _ in range(20):
            rows = rodas_kernels.integrate_each(y0, times, ctx, *tapes, 1e-6, 1e-8, 100_000, True)
            out = np.concatenate([r[0] for r in rows], axis=1)
            grads = rodas_kernels.adjoint_each(
                np.ones_like(out), [r[2:8] for r in rows], ctx, *tapes
            )
        outputs.append((out, *grads))

    with mock.patch.object(threads, "_row_pool", lambda: None):
        in_order = _clocks(solve_and_adjoint, 5, 20)
    ordered = outputs[-1]
    in_threads = _clocks(solve_and_adjoint, 5, 20)
    same = all(np.array_equal(a, b) for a, b in zip(ordered, outputs[-1], strict=True))
    print(
        f"{system:>17} | {y0.shape[0]} conditions, forward + adjoint | one after the other "
        f"{in_order[0] * 1e3:7.2f} ms wall, {in_order[1] * 1e3:7.2f} ms CPU | in "
        f"{threads.usable_cpus()} threads {in_threads[0] * 1e3:7.2f} ms wall, "
        f"{in_threads[1] * 1e3:7.2f} ms CPU | wall x{in_order[0] / in_threads[0]:.2f} | "
        f"same bits: {'yes' if same else 'NO'}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--systems", nargs="+", default=["goodwin", "goldbeter", "yeast_glycolysis", "seir"]
    )
    parser.add_argument("--conditions", type=int, default=1)
    args = parser.parse_args()
    for system in args.systems:
        if args.conditions > 1:
            conditions(system, args.conditions)
        else:
            one(system)


if __name__ == "__main__":
    main()
