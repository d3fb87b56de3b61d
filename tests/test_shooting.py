import torch

from ude import Solver, build_hybrid, simulate_measurements
from ude.fit import make_module


def _module(segments: int):
    m = simulate_measurements("lotka_volterra", noise=0.0)
    torch.set_default_dtype(torch.float64)
    try:
        model = build_hybrid("lotka_volterra", m, Solver(rtol=1e-9, atol=1e-11))
    finally:
        torch.set_default_dtype(torch.float32)
    return make_module(model, m, shooting_segments=segments)


def test_segments_cover_the_grid_with_shared_boundaries():
    module = _module(3)
    assert module.segments == [(0, 10), (10, 20), (20, 30)]
    assert module.nodes.shape == (1, 2, 2)


def test_nodes_on_the_trajectory_reproduce_single_shooting_with_no_gap():
    module = _module(3)
    cond = torch.tensor([0])
    with torch.no_grad():
        single, _ = module.trajectory(cond)
        module.nodes.copy_(single[:, [10, 20]])
        pieces, gap = module.trajectory(cond, shooting=True)
    torch.testing.assert_close(pieces, single, rtol=1e-6, atol=1e-8)
    assert gap < 1e-12


def test_a_gap_between_pieces_is_penalised():
    module = _module(3)
    cond = torch.tensor([0])
    with torch.no_grad():
        single, _ = module.trajectory(cond)
        module.nodes.copy_(single[:, [10, 20]] * 1.1)
        _, gap = module.trajectory(cond, shooting=True)
    assert gap > 1e-4
