"""The Laplace band counts the draws whose simulation fails: a failed draw is a draw outside
the band, never one left out so that the band looks tighter (the rule of the predictive
band's mixture, :mod:`ude.uq.escape`)."""

from __future__ import annotations

import numpy as np
import pytest

from ude.distill.uncertainty import LaplaceInterval
from ude.model.initial_scale import entry_conditions, held_entries

TIMES = np.linspace(0, 1, 11)


def decay_data():
    """x = 2 exp(-t/2) on TIMES with 5 % noise."""
    from ude.data import Measurements

    rng = np.random.default_rng(0)
    values = 2.0 * np.exp(-0.5 * TIMES) + 0.05 * rng.standard_normal(len(TIMES))
    return Measurements(
        times=TIMES, values=values[None, :, None, None], observables=["x"], conditions=["c0"]
    )


def stiff_twin(data, rtol: float):
    """``x' = -k x + a x^2/(1 + x)`` refitted to ``data`` with rodas5p at ``rtol``."""
    from ude.distill import TwinRefit
    from ude.spec import ModelSpec

    spec = ModelSpec.from_dict(
        {
            "states": ["x"],
            "parameters": {"k": {"value": 0.5, "learn": True}, "a": {"value": 0.1, "learn": True}},
            "equations": {"x": "-k*x + a*x**2/(1 + x)"},
        }
    )
    refit = TwinRefit(max_iter=40, method="rodas5p", rtol=rtol, atol=rtol / 100)
    return refit.fit(spec, data, noise=np.array([0.05])).model


def hessians_both_ways(model, data, monkeypatch):
    """``(gradient, Hessian)`` by differences (the double-backward pass may not run) and by
    the double-backward pass."""
    from ude.distill import uncertainty

    fail = lambda g, p: pytest.fail("not by differences")  # noqa: E731
    monkeypatch.setattr(uncertainty, "_batched_rows", fail)
    by_differences = uncertainty.hessian(model, data)
    monkeypatch.undo()
    monkeypatch.setattr(uncertainty, "BY_DIFFERENCES", False)
    return by_differences, uncertainty.hessian(model, data)


def band_of(states: np.ndarray, failed: np.ndarray, level: float = 0.95):
    """The band LaplaceInterval.forecast makes of these draws ``(sample, condition, time,
    state)``, without a model behind them."""
    interval = LaplaceInterval(n_samples=len(states), level=level)
    interval.trajectories = lambda *a, **k: (states, failed, np.zeros((len(states), 1)), None)
    return interval.forecast(None, None, TIMES)


def draws(n: int, seed: int = 0) -> np.ndarray:
    """``n`` draws of one state: standard normal, constant in time."""
    z = np.random.default_rng(seed).standard_normal(n)
    return np.repeat(z[:, None, None, None], len(TIMES), axis=2)


def test_a_band_with_too_many_failed_draws_is_unbounded_not_tight():
    """10 of 100 draws fail from the start: no finite band holds 95 % of all the draws, so
    the band is unbounded and not usable (dropping them gave a finite band over the other
    90, which covers 85.5 % of the draws at most)."""
    states = draws(100)
    failed = np.zeros(100, dtype=bool)
    failed[:10] = True
    states[:10] = np.nan
    band = band_of(states, failed)
    assert band.n_failed == 10
    assert np.all(np.isinf(band.lower)) and np.all(np.isinf(band.upper))
    assert not band.usable and band.unbounded_from() == [0.0]


def test_a_few_failed_draws_widen_the_band_to_keep_its_level():
    """3 of 100 draws fail: the band is the central 0.95/0.97 interval of the other 97, so
    it holds 95 % of all 100 draws even if every failed one lies outside; wider than the
    survivors' own 95 % band."""
    states = draws(100, seed=1)
    failed = np.zeros(100, dtype=bool)
    failed[:3] = True
    states[:3] = np.nan
    band = band_of(states, failed)
    alive = states[3:, 0, 0, 0]
    dropped = np.quantile(alive, [0.025, 0.975])
    wanted = np.quantile(alive, [(1 - 0.95 / 0.97) / 2, (1 + 0.95 / 0.97) / 2])
    assert band.lower[0, 0, 0] == pytest.approx(wanted[0])
    assert band.upper[0, 0, 0] == pytest.approx(wanted[1])
    assert band.lower[0, 0, 0] < dropped[0] and band.upper[0, 0, 0] > dropped[1]
    assert band.usable and band.unbounded_from() == [None]
    inside = (states[:, 0, 0, 0] >= band.lower[0, 0, 0]) & (
        states[:, 0, 0, 0] <= band.upper[0, 0, 0]
    )
    assert inside.sum() >= 95  # of all 100 draws, the failed ones counted outside


def test_a_draw_that_escapes_late_counts_from_when_it_escaped():
    """A draw that blows up at t = 0.5 (its solve froze the row there) is inside the pool
    before and counted outside after: 6 such draws of 100 leave the band finite up to 0.4
    and unbounded from the output before the freeze on."""
    states = draws(100, seed=2)
    failed = np.zeros(100, dtype=bool)
    failed[:6] = True
    states[:6, :, 5:, :] = 1e6  # frozen at the bound from t = 0.5
    band = band_of(states, failed)
    assert np.all(np.isfinite(band.upper[0, :4, 0]))
    assert np.all(np.isinf(band.upper[0, 4:, 0]))
    assert band.unbounded_from() == [pytest.approx(0.4)]
    assert band.coverage(np.zeros((1, len(TIMES), 1))) == 1.0  # over the bounded times


def test_no_failed_draws_is_the_plain_quantile_band():
    states = draws(200, seed=3)
    band = band_of(states, np.zeros(200, dtype=bool))
    lo, hi = np.quantile(states[:, 0, 0, 0], [0.025, 0.975])
    assert band.lower[0, 0, 0] == pytest.approx(lo) and band.upper[0, 0, 0] == pytest.approx(hi)


def test_the_laplace_approximation_is_computed_once_per_model_data_and_values(monkeypatch):
    """The report asks for the twin's Laplace approximation three times: the second ask with
    the same model, data and values is the first's result; new values or other data (an
    equal copy counts as other) compute it again. The Hessian taken in one batched backward
    pass is the one taken row by row."""
    import copy

    import torch

    from ude.distill import TwinRefit, uncertainty
    from ude.distill.uncertainty import hessian, laplace
    from ude.spec import ModelSpec

    data = decay_data()
    spec = ModelSpec.from_dict(
        {
            "states": ["x"],
            "parameters": {"k": {"value": 0.5, "learn": True}},
            "equations": {"x": "-k*x"},
        }
    )
    model = TwinRefit(max_iter=40).fit(spec, data, noise=np.array([0.05])).model
    first = laplace(model, data)
    assert laplace(model, data) is first
    assert laplace(model, copy.deepcopy(data)) is not first
    again = laplace(model, data)
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).add_(0.01)
    moved = laplace(model, data)
    assert moved is not again and not np.allclose(moved.mean, again.mean)
    batched = hessian(model, data)[1]
    monkeypatch.setattr(uncertainty, "BATCHED_HESSIAN", False)
    np.testing.assert_allclose(batched, hessian(model, data)[1], rtol=1e-10, atol=1e-12)


def test_the_hessian_through_a_stiff_solve_is_batched_and_equals_the_row_by_row_one(monkeypatch):
    """A twin refitted with rodas5p: its solve inside the Hessian is the replay of its
    accepted steps as a plain graph (differentiable_twice), so all rows come from one
    vectorised backward pass (through the solver's own autograd Function that pass fails, and
    the rows were taken one by one: 624 s on the repressilator's twin). Same Hessian, to
    rounding, as the Function's row-by-row double backward."""

    from ude.distill import uncertainty

    data = decay_data()
    model = stiff_twin(data, rtol=1e-6)
    assert model.solver.method == "rodas5p"
    monkeypatch.setattr(uncertainty, "BY_DIFFERENCES", False)
    monkeypatch.setattr(uncertainty, "BATCHED_HESSIAN", False)
    by_row = uncertainty.hessian(model, data)[1]  # the Function's double backward, row by row
    monkeypatch.setattr(uncertainty, "BATCHED_HESSIAN", True)
    taken, real = [], uncertainty._batched_rows
    monkeypatch.setattr(uncertainty, "_batched_rows", lambda g, p: taken.append(real(g, p)))
    batched = uncertainty.hessian(model, data)[1]
    assert taken[0] is not None  # one batched pass: the fallback to rows did not run
    np.testing.assert_allclose(batched, by_row, rtol=1e-7, atol=1e-9 * np.abs(by_row).max())


def three_condition_problem():
    """A stiff model's spec (rates and a saturation constant learned) and noisy data of it
    under three conditions (initial states)."""
    from ude.data import Measurements
    from ude.spec import ModelSpec

    spec = ModelSpec.from_dict(
        {
            "states": ["x", "y"],
            "parameters": {
                "k": {"value": 20.0, "learn": True, "min": 0.0},
                "v": {"value": 1.0, "learn": True},
                "K": {"value": 0.3, "learn": True, "min": 0.01, "max": 10.0},
            },
            "equations": {"x": "-k*x + v*y/(K + y)", "y": "k*x - v*y/(K + y)"},
        }
    )
    times = np.linspace(0, 3, 16)
    rng = np.random.default_rng(1)
    starts = np.array([[1.0, 0.0], [0.5, 0.5], [0.2, 1.5]])
    values = []
    for x0, y0 in starts:  # the true model, by a fine explicit Euler
        x, y, out, dt = x0, y0, [], 1e-4
        for t in np.arange(0, 3 + dt / 2, dt):
            if np.isclose(times, t, atol=dt / 2).any():
                out.append([x, y])
            r = 20 * x - y / (0.3 + y)
            x, y = x - dt * r, y + dt * r
        values.append(np.array(out))
    values = np.array(values) * (1 + 0.03 * rng.standard_normal((3, len(times), 2)))
    data = Measurements(
        times=times, values=values[:, :, None, :], observables=["x", "y"], conditions=list("abc")
    )
    return spec, data


def three_condition_twin():
    """A stiff twin (rodas5p, no networks) refitted to noisy data of three conditions: rates,
    a saturation constant, the conditions' initial states and the noise levels learned."""
    from ude.distill import TwinRefit

    spec, data = three_condition_problem()
    refit = TwinRefit(max_iter=30, method="rodas5p", rtol=1e-6, atol=1e-8)
    model = refit.fit(spec, data, noise=np.array([0.03, 0.03])).model
    assert model.solver.method == "rodas5p" and not len(model.networks)
    return model, data


def test_a_stiff_twin_s_hessian_by_differences_of_its_gradient_is_the_exact_one(monkeypatch):
    """A stiff twin (rodas5p, no networks) takes its Hessian as central differences of the
    compiled gradient, every solve on the accepted steps of the solve at the values: the same
    Hessian as the double-backward pass through those steps, over rates, a saturation
    constant, learned initial states of three conditions and the learned noise."""
    import torch

    from ude.distill import uncertainty

    model, data = three_condition_twin()
    n_entries = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_entries >= 3 + 6 + 2  # rates, initial states, noise levels
    (g, by_differences), (g_exact, exact) = hessians_both_ways(model, data, monkeypatch)
    np.testing.assert_allclose(g, g_exact, rtol=1e-10, atol=1e-10 * np.abs(g_exact).max())
    scale = np.abs(exact).max()
    np.testing.assert_allclose(by_differences, exact, rtol=1e-5, atol=1e-6 * scale)
    # the model's values are where they were
    again = torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])
    np.testing.assert_array_equal(again.numpy(), uncertainty.laplace(model, data).mean)


def test_a_condition_s_initial_state_rows_solve_that_condition_alone(monkeypatch):
    """The rows of a condition's initial state are differences of that condition's gradient,
    solved alone: each moved entry replays one condition, not all three; the rows every
    condition shares (rates, constant, noise) replay all of them."""
    from ude.distill import uncertainty
    from ude.model import rodas_kernels

    model, data = three_condition_twin()
    replayed, real = [], rodas_kernels.replay
    monkeypatch.setattr(
        rodas_kernels, "replay", lambda y0, *a: replayed.append(y0.shape[0]) or real(y0, *a)
    )
    assert uncertainty._hessian_by_differences(model, data) is not None
    params = [p for p in model.parameters() if p.requires_grad]
    free = ~held_entries(model, params)
    own = entry_conditions(model, params) >= 0
    assert (free & own).sum() == 6 and (free & ~own).sum() == 5
    # two moves per entry, two more each time its step shrinks: the shared rows first, on
    # all three conditions, then the initial states' on one (the whole data for every entry
    # took 40 replays of three conditions on this twin)
    whole = replayed.count(3)
    assert replayed == [3] * whole + [1] * (len(replayed) - whole)
    assert 2 * 5 <= whole < 2 * 11 and len(replayed) - whole >= 2 * 6
    split = uncertainty._hessian_by_differences(model, data)[1]
    replayed.clear()
    monkeypatch.setattr(uncertainty, "BY_CONDITION", False)  # the path before: whole data
    together = uncertainty._hessian_by_differences(model, data)[1]
    assert set(replayed) == {3} and len(replayed) >= 2 * 11
    scale = np.abs(together).max()
    np.testing.assert_allclose(split, together, rtol=1e-9, atol=1e-12 * scale)


def test_a_stiff_twin_s_draws_that_blow_up_escape_where_the_torch_solve_says():
    """The band's draw-by-draw solves of a stiff twin run in the compiled kernels: a draw
    that blows up in finite time (x' = a x^2 from 1: at t = 1/a) escapes at the output where
    the torch solve, which freezes its row at the bound, says it does, and the draws that
    stay finite have the same trajectory."""
    import copy

    import torch

    from ude.distill import TwinRefit, uncertainty
    from ude.model.doses import RowsRHS, solve_with_doses
    from ude.spec import ModelSpec
    from ude.uq.escape import escape_index

    data = decay_data()
    spec = ModelSpec.from_dict(
        {
            "states": ["x"],
            "parameters": {"a": {"value": -0.5, "learn": True}},
            "equations": {"x": "a*x**2"},
        }
    )
    refit = TwinRefit(max_iter=20, method="rodas5p", rtol=1e-6, atol=1e-8)
    model = refit.fit(spec, data, noise=np.array([0.05])).model
    interval = LaplaceInterval(n_samples=4)
    ready = interval.prepare(model, data, initial=np.array([[1.0]]))
    column = list(model.context(torch.tensor([0])).shape)[-1] - 1  # a: the last entry
    a = torch.tensor([-0.5, 0.3, 0.8, 1.5], dtype=ready.context.dtype)
    ready.context[:, column] = a
    times = np.linspace(0, 2, 21)
    solver = copy.copy(model.solver)
    solver.max_steps = 500
    compiled, by_torch = [], []
    for s in range(4):
        rows = slice(s, s + 1)
        compiled.append(uncertainty._compiled_rows(ready, rows, solver, times))
        rhs = RowsRHS(model.known_terms, ready.context[rows], ready.bound)
        t = torch.as_tensor(times, dtype=ready.y0.dtype)
        try:
            out = solve_with_doses(solver, rhs.dosing, ready.y0[rows], t, [()], ["x"])
            by_torch.append((out.transpose(0, 1), rhs.dead))
        except Exception:  # noqa: BLE001 - a failed torch solve: the draw is all nan
            by_torch.append((torch.full((1, len(times), 1), torch.nan), torch.ones(1, dtype=bool)))
    stack = lambda parts: (  # noqa: E731
        torch.cat([p[0] for p in parts])[:, None].numpy(),
        torch.cat([p[1] for p in parts]).numpy(),
    )
    (c_states, c_dead), (t_states, t_dead) = stack(compiled), stack(by_torch)
    np.testing.assert_array_equal(c_dead, [False, False, True, True])
    np.testing.assert_array_equal(c_dead, t_dead)
    np.testing.assert_array_equal(escape_index(c_states, c_dead), escape_index(t_states, t_dead))
    np.testing.assert_allclose(c_states[:2], t_states[:2], rtol=1e-6)


def test_a_stiff_twin_s_band_from_compiled_draws_is_the_torch_solve_s(monkeypatch):
    """A stiff twin's band solves each draw in the compiled kernels; the band is the one the
    shared torch solve of all draws gives, to the solver's tolerance."""
    from ude.distill import uncertainty

    data = decay_data()
    model = stiff_twin(data, rtol=1e-8)
    times = np.linspace(0, 3, 31)
    interval = LaplaceInterval(n_samples=50, seed=1)
    calls, real = [], uncertainty._compiled_rows
    monkeypatch.setattr(uncertainty, "_compiled_rows", lambda *a: calls.append(1) or real(*a))
    compiled = interval.forecast(model, data, times)
    assert len(calls) == 50  # each draw alone
    monkeypatch.setattr(uncertainty, "_compiles", lambda ready, solver: False)
    by_torch = interval.forecast(model, data, times)
    assert compiled.n_failed == by_torch.n_failed == 0
    for a, b in ((compiled.lower, by_torch.lower), (compiled.upper, by_torch.upper)):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_a_hessian_by_differences_shrinks_its_step_beside_a_pole(monkeypatch):
    """A learned initial state 4e-6 past a Michaelis-Menten denominator's zero (as a
    Goldbeter twin's M(t0) sat): a step of 1e-5 crosses the pole, its one-sided differences
    disagree, and the step shrinks until they agree; the Hessian is the exact one."""
    import torch

    from ude.distill import TwinRefit
    from ude.spec import ModelSpec

    data = decay_data()
    spec = ModelSpec.from_dict(
        {
            "states": ["x"],
            "parameters": {"a": {"value": 1.0, "learn": True}, "b": {"value": 1.0, "learn": True}},
            "equations": {"x": "a*(1 - x) - b*x/(0.005 + x)"},
        }
    )
    refit = TwinRefit(max_iter=0, method="rodas5p")
    model = refit.fit(spec, data, noise=np.array([0.05])).model
    with torch.no_grad():
        model.initial.fill_(-0.005 - 4e-6)
    (_, by_differences), (_, exact) = hessians_both_ways(model, data, monkeypatch)
    np.testing.assert_allclose(by_differences, exact, rtol=1e-4, atol=1e-6 * np.abs(exact).max())


def test_a_known_initial_state_stays_out_of_a_stiff_twin_s_hessian_by_differences(monkeypatch):
    """A latent dose d with a known start (its value enters the solve, its gradient is
    detached): its row and column of the Hessian by differences are zero, as in the
    double-backward pass, so the Laplace approximation holds it at its value. Before,
    moving it changed the rate's gradient, and the dose-response twin's band drew doses
    that blew up."""
    from ude.data import Measurements
    from ude.distill import TwinRefit, uncertainty
    from ude.spec import ModelSpec

    spec = ModelSpec.from_dict(
        {
            "states": ["d", "x"],
            "parameters": {"k": {"value": 0.8, "learn": True}, "v": {"value": 1.2, "learn": True}},
            "equations": {"d": "-k*d", "x": "v*d - x"},
        }
    )
    rng = np.random.default_rng(2)
    x = 2.0 * (np.exp(-0.5 * TIMES) - np.exp(-TIMES)) / 0.5  # k = 0.5, v = 1, d(0) = 1
    data = Measurements(
        times=TIMES,
        values=(x * (1 + 0.03 * rng.standard_normal(len(TIMES))))[None, :, None, None],
        observables=["x"],
        conditions=["c0"],
    )
    refit = TwinRefit(max_iter=40, method="rodas5p", rtol=1e-6, atol=1e-8)
    model = refit.fit(
        spec, data, initial=np.array([[1.0, 0.0]]), noise=np.array([0.03]),
        held_initial=np.array([[True, False]]),
    ).model  # fmt: skip
    names = uncertainty._parameter_names(model)
    held = names.index("d(t0)[0]")
    (_, by_differences), (_, exact) = hessians_both_ways(model, data, monkeypatch)
    assert not by_differences[held].any() and not by_differences[:, held].any()
    scale = np.abs(exact).max()
    np.testing.assert_allclose(by_differences, exact, rtol=1e-5, atol=1e-6 * scale)
    assert not uncertainty.laplace(model, data).free[held]
