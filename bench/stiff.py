"""dopri5 against rosenbrock23 on the zoo's stiff systems (Goldbeter, yeast glycolysis).

    python bench/stiff.py

For each system's true model, from its scenario's initial state over its scenario's time grid
(Goldbeter: [0, 100], 41 times; yeast glycolysis: [0, 5], 51 times), prints the wall time and
the number of right-hand-side calls (a Jacobian counts as one call) of a forward solve and of
a forward + backward pass (loss = sum of the solution), and the error against scipy's Radau
at rtol 1e-10: the largest pointwise relative error, and the largest error over each state's
peak value. dopri5 runs at rtol 1e-6, atol 1e-8; rosenbrock23 at its config defaults.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ude.model import Solver  # noqa: E402
from ude.spec.compile import CompiledExpressions  # noqa: E402
from ude.spec.model_spec import ModelSpec  # noqa: E402
from ude.spec.simulate import simulate_spec  # noqa: E402
from ude.systems import get_system  # noqa: E402

SYSTEMS = ("goldbeter", "yeast_glycolysis")
SOLVERS = {
    "dopri5": Solver("dopri5", rtol=1e-6, atol=1e-8),
    "rosenbrock23": Solver("rosenbrock23", rtol=1e-5, atol=1e-8),
}


class SpecRHS(nn.Module):
    """The right-hand side of a symbolic spec (compiled by ude), its parameter values
    learnable; counts its calls."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.rhs = CompiledExpressions(spec.known_rhs(), spec.symbols).double()
        values = [p.value for p in spec.parameters.values()]
        self.values = nn.Parameter(torch.tensor(values, dtype=torch.float64))
        self.calls = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.rhs(torch.cat([y, self.values.expand(y.shape[0], -1)], dim=-1))


def timed_solve(
    solver: Solver, spec: ModelSpec, y0: torch.Tensor, t: torch.Tensor, backward: bool
) -> tuple[float, int, np.ndarray]:
    """Wall seconds, right-hand-side calls and the solution ``(time, state)`` of one solve
    (with the backward pass of ``sum(solution)`` when ``backward``)."""
    rhs = SpecRHS(spec)
    y0 = y0.clone().requires_grad_(backward)
    start = time.perf_counter()
    with torch.set_grad_enabled(backward):
        sol = solver(rhs, y0, t)
        if backward:
            sol.sum().backward()
    return time.perf_counter() - start, rhs.calls, sol.detach()[:, 0].numpy()


def errors(sol: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Largest pointwise relative error and largest error over the state's peak value."""
    diff = np.abs(sol - ref)
    return float(np.max(diff / np.abs(ref))), float(np.max(diff / np.abs(ref).max(axis=0)))


def bench_system(name: str) -> None:
    system = get_system(name)
    scenario = system.scenario
    times = np.linspace(scenario.t_start, scenario.t_end, scenario.n_times)
    initial = np.asarray(scenario.initial[:1])
    ref = simulate_spec(system.truth, initial, times, rtol=1e-10, atol=1e-12, method="Radau")[0]
    t = torch.from_numpy(times)
    y0 = torch.from_numpy(initial)
    print(f"\n{name}: t in [{times[0]:g}, {times[-1]:g}], {len(times)} output times")
    print(
        f"{'solver':<14}{'pass':<18}{'seconds':>9}{'rhs calls':>11}{'rel err':>10}{'err/peak':>10}"
    )
    for label, solver in SOLVERS.items():
        for backward in (False, True):
            seconds, calls, sol = timed_solve(solver, system.truth, y0, t, backward)
            rel, peak = errors(sol, ref)
            kind = "forward+backward" if backward else "forward"
            print(f"{label:<14}{kind:<18}{seconds:>9.2f}{calls:>11d}{rel:>10.1e}{peak:>10.1e}")


def main() -> None:
    torch.set_num_threads(1)
    for name in SYSTEMS:
        bench_system(name)


if __name__ == "__main__":
    main()
