"""Cost of the compiled known part vs the network, per right-hand-side call.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/compile_speed.py

For three specs (Lotka-Volterra known terms, the enzyme reaction network, the 7-species yeast
glycolysis model as fully known) it times, in this one process, the compiled known right-hand
side and the default network (32 hidden, depth 2, tanh) on a batch of conditions, forward and
forward + backward, and prints the ratio known / network. Ratios below 1 mean the known part
is cheaper. ``ops`` is the number of torch calls of the known part. Absolute times depend on
the machine; the ratios are what to read.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ude.model.networks import MLP
from ude.spec import CompiledExpressions, ModelSpec, load_spec

GLYCOLYSIS = {
    "states": ["S1", "S2", "S3", "S4", "S5", "S6", "S7"],
    "parameters": {
        "J0": 2.5,
        "k1": 100.0,
        "k2": 6.0,
        "k3": 16.0,
        "k4": 100.0,
        "k5": 1.28,
        "k6": 12.0,
        "k": 1.8,
        "kappa": 13.0,
        "q": 4.0,
        "K1": 0.52,
        "psi": 0.1,
        "N": 1.0,
        "A": 4.0,
    },
    "equations": {
        "S1": "J0 - k1*S1*S6/(1 + (S6/K1)**q)",
        "S2": "2*k1*S1*S6/(1 + (S6/K1)**q) - k2*S2*(N - S5) - k6*S2*S5",
        "S3": "k2*S2*(N - S5) - k3*S3*(A - S6)",
        "S4": "k3*S3*(A - S6) - k4*S4*S5 - kappa*(S4 - S7)",
        "S5": "k2*S2*(N - S5) - k4*S4*S5 - k6*S2*S5",
        "S6": "-2*k1*S1*S6/(1 + (S6/K1)**q) + 2*k3*S3*(A - S6) - k5*S6",
        "S7": "psi*kappa*(S4 - S7) - k*S7",
    },
}


def _time(fn: Callable[[], object], repeat: int) -> float:
    for _ in range(max(repeat // 10, 5)):
        fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def bench(spec: ModelSpec, batch: int, repeat: int) -> tuple[float, float, float, float, int]:
    n = len(spec.states)
    known = CompiledExpressions(spec.known_rhs(), spec.symbols)
    net = MLP(n, n, hidden=32, depth=2)
    values = torch.rand(batch, len(spec.symbols)) + 0.5
    y = values[:, :n].clone()
    values.requires_grad_(True)
    y.requires_grad_(True)

    def known_fb():
        known(values).sum().backward()

    def net_fb():
        net(y).sum().backward()

    with torch.no_grad():
        kf = _time(lambda: known(values), repeat)
        nf = _time(lambda: net(y), repeat)
    return kf, nf, _time(known_fb, repeat), _time(net_fb, repeat), known.n_steps


def main() -> None:
    torch.set_num_threads(1)
    specs = {
        "lotka_volterra (known part)": load_spec("lotka_volterra"),
        "enzyme reactions (full)": load_spec("examples/enzyme_kinetics/enzyme.yaml"),
        "yeast glycolysis (full, 7 states)": ModelSpec.from_dict(GLYCOLYSIS, "glycolysis"),
    }
    print(
        f"{'spec':36s} {'ops':>4s} {'batch':>5s} {'known fwd':>10s} {'net fwd':>10s} {'ratio':>6s} "
        f"{'known f+b':>10s} {'net f+b':>10s} {'ratio':>6s}"
    )
    for name, spec in specs.items():
        for batch in (8, 256):
            kf, nf, kb, nb, ops = bench(spec, batch, repeat=200)
            print(
                f"{name:36s} {ops:4d} {batch:5d} {kf * 1e6:8.1f}us {nf * 1e6:8.1f}us "
                f"{kf / nf:6.2f} {kb * 1e6:8.1f}us {nb * 1e6:8.1f}us {kb / nb:6.2f}"
            )


if __name__ == "__main__":
    main()
