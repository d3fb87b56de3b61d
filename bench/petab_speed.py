"""Likelihood + gradient of the PEtab SciML conformance LV case (001: a network in the
right-hand side) at its nominal parameters: time per call after the first, the gradient
against central finite differences, and the torch solve of the same model as the baseline.

    PYTHONPATH=. python bench/petab_speed.py [--case 001] [--repeats 200] [--rtol 1e-8]

Target (issue 17): <= 10 ms per likelihood + gradient on 2 cores. The compiled path
(ude/petab/fast.py: Dormand-Prince 5(4) and the exact adjoint of its steps in machine code)
is what ``PetabModel`` uses for a dopri5 solve whose right-hand side compiles; the baseline
is the same model solved by torchdiffeq's dopri5 with backpropagation through its steps.
Times are given as wall clock and as this process's CPU time (robust on a shared machine).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ude.model.solver import Solver
from ude.petab import PetabModel, load_problem

CASES = (
    Path(__file__).resolve().parents[1] / "tests/data/petab_sciml_testsuite/sciml_problem_import"
)


def _per_call(fn, repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call of ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def _finite_differences(model: PetabModel, tensor: torch.Tensor, index: tuple, h: float) -> float:
    """Central differences at ``h`` and ``h / 2`` extrapolated (Richardson): error O(h^4),
    where plain central differences at this ``h`` are off by ~1e-4 on this stiff-ish
    likelihood."""

    def central(step: float) -> float:
        with torch.no_grad():
            original = float(tensor[index])
            tensor[index] = original + step
            up = float(model.forward())
            tensor[index] = original - step
            down = float(model.forward())
            tensor[index] = original
        return (up - down) / (2 * step)

    return (4 * central(h / 2) - central(h)) / 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", default="001")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--baseline-repeats", type=int, default=3)
    parser.add_argument("--rtol", type=float, default=1e-8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = CASES / args.case / "petab" / "problem.yaml"
    solver = Solver("dopri5", rtol=args.rtol, atol=args.rtol * 1e-2, max_steps=1_000_000)
    model = PetabModel(load_problem(path), solver=solver)
    if model.compiled is None:
        raise SystemExit(f"case {args.case}: its right-hand side does not compile")
    start = time.perf_counter()
    model.gradient()
    first = time.perf_counter() - start
    value, mech, nets = model.gradient()
    both, both_cpu = _per_call(model.gradient, args.repeats)
    with torch.no_grad():
        alone, alone_cpu = _per_call(model.forward, args.repeats)
    baseline = PetabModel(load_problem(path), solver=solver, compiled=False)
    baseline.gradient()
    base, base_cpu = _per_call(baseline.gradient, args.baseline_repeats)
    base_value = baseline.gradient()[0]

    # Finite differences of the same (compiled) likelihood: every mechanistic parameter and
    # the first entry of each network array.
    worst = 0.0
    checks = [(q, model.theta, (i,), mech[q]) for i, q in enumerate(model.estimated)]
    for net_id, net in model.networks.items():
        for key, tensor in net.named_parameters():
            if tensor.requires_grad:
                _, layer, name = key.split(".", 2)
                index = (0,) * tensor.dim()
                checks.append(
                    (
                        f"{net_id}.{layer}.{name}{list(index)}",
                        tensor,
                        index,
                        nets[net_id][layer][name][index],
                    )
                )
    for label, tensor, index, grad in checks:
        h = 1e-4 * max(1.0, abs(float(tensor.detach()[index])))
        fd = _finite_differences(model, tensor, index, h)
        rel = abs(fd - grad) / max(abs(fd), 1e-8)
        worst = max(worst, rel)
        print(f"  d llh / d {label}: adjoint {grad:.8g}, finite difference {fd:.8g} ({rel:.1e})")
    print(
        f"case {args.case} (rtol {args.rtol:g}, {args.threads} threads): llh {value:.6f} "
        f"(torch path {base_value:.6f}); first call {first:.2f} s"
    )
    print(
        f"  llh + gradient: {both * 1e3:.2f} ms per call wall, {both_cpu * 1e3:.2f} ms CPU "
        f"(target <= 10 ms); llh alone {alone * 1e3:.2f} ms wall, {alone_cpu * 1e3:.2f} ms CPU"
    )
    print(
        f"  torch baseline: {base * 1e3:.0f} ms per call wall, {base_cpu * 1e3:.0f} ms CPU: "
        f"compiled is {base / both:.0f}x faster (wall), {base_cpu / both_cpu:.0f}x (CPU)"
    )
    print(
        f"  gradient vs finite differences: max relative difference {worst:.1e} over "
        f"{len(checks)} entries"
    )


if __name__ == "__main__":
    main()
