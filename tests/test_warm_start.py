import numpy as np
import torch
from scipy.interpolate import make_smoothing_spline

from ude import Solver, build_hybrid, simulate_measurements
from ude.fit import missing_terms
from ude.model.networks import last_layer
from ude.spec.simulate import simulate_spec
from ude.train.warm_start import (
    LatentPaths,
    WarmStartResult,
    gradient_matching,
    smooth_states,
    spline_bound,
    within_noise,
)


def _clean_lv():
    return simulate_measurements("lotka_volterra", noise=0.0, n_times=61)


def test_smoothed_derivatives_match_the_true_right_hand_side():
    m = _clean_lv()
    sm = smooth_states(m, ["x", "y"])
    x, y = sm.y.T
    true = np.stack([1.3 * x - 0.9 * x * y, 0.8 * x * y - 1.8 * y], axis=1)
    inner = slice(8, -8)  # spline derivatives are least accurate at the ends
    err = np.abs(sm.dy[inner] - true[inner]).max(axis=0) / np.abs(true).max(axis=0)
    assert (err < 0.02).all(), err


def _fast_sine(seed: int = 0):
    """Six samples a period: cross-validation takes the oscillation for noise."""
    t = np.linspace(0.0, 5.0, 30)
    clean = np.sin(2 * np.pi * t) + 0.1 * t
    return t, clean, clean + 0.1 * np.random.default_rng(seed).standard_normal(len(t))


def _rms(x):
    return float(np.sqrt(np.mean(np.square(x))))


def test_a_spline_smoothing_more_than_the_noise_is_cut_back_to_it():
    t, clean, v = _fast_sine()
    gcv = make_smoothing_spline(t, v)
    assert _rms(v - gcv(t)) > 2 * spline_bound(t, v)  # a near-straight line through the samples
    kept = within_noise(gcv, t, v)
    assert _rms(v - kept(t)) <= spline_bound(t, v) * (1 + 1e-9)
    assert _rms(clean - kept(t)) < 0.5 * _rms(clean - gcv(t))


def test_a_spline_within_the_noise_is_kept_as_cross_validation_chose_it():
    t = np.linspace(0.0, 5.0, 30)
    v = np.exp(-t / 2) + 0.02 * np.random.default_rng(0).standard_normal(len(t))
    gcv = make_smoothing_spline(t, v)
    assert within_noise(gcv, t, v) is gcv


def test_the_spline_bound_is_the_noise_of_a_straight_signal():
    t = np.sort(np.random.default_rng(1).uniform(0.0, 10.0, 2000))
    v = 3.0 - 0.2 * t + 0.05 * np.random.default_rng(2).standard_normal(len(t))
    assert abs(spline_bound(t, v) - 0.05) < 0.003


def test_bounded_starts_move_only_the_initial_states_and_bring_them_to_the_truth():
    # yeast glycolysis, 30 samples over [0, 5]: cross-validation smooths its opening away
    m = simulate_measurements(
        "yeast_glycolysis", noise=0.05, n_times=30, seed=0, noise_scale="range"
    )
    plain = smooth_states(m, m.observables)
    bounded = smooth_states(m, m.observables, bounded_starts=True)
    assert np.array_equal(plain.y, bounded.y) and np.array_equal(plain.dy, bounded.dy)
    truth = np.asarray(m.truth.initial)
    assert np.abs(bounded.initial - truth).mean() < 0.6 * np.abs(plain.initial - truth).mean()


def test_gradient_matching_learns_the_missing_term_without_solving():
    torch.manual_seed(0)
    m = _clean_lv()
    torch.set_default_dtype(torch.float64)
    try:
        model = build_hybrid("lotka_volterra", m, Solver())
    finally:
        torch.set_default_dtype(torch.float32)
    true_states = simulate_spec(m.truth.spec, m.truth.initial, m.times)
    before = missing_terms(model, m, true_states)
    gradient_matching(model, smooth_states(m, ["x", "y"]), steps=1500, lr=1e-2)
    learned, true = missing_terms(model, m, true_states)
    rel = np.sqrt(((learned - true) ** 2).mean(0) / (true**2).mean(0))
    rel_before = np.sqrt(((before[0] - true) ** 2).mean(0) / (true**2).mean(0))
    assert (rel_before > 0.9).all()  # the fresh network is almost silent
    assert (rel < 0.15).all(), rel
    np.testing.assert_allclose(model.initial.detach().numpy()[0], m.truth.initial[0], rtol=0.02)


def test_a_warm_start_whose_trajectory_cannot_be_solved_is_discarded(monkeypatch):
    import ude.train.module as module
    from ude.fit import fit

    def poisoned(model, *args, **kwargs):  # a warm start that leaves an unsolvable model
        with torch.no_grad():
            for p in model.networks.parameters():
                p.fill_(float("nan"))
        return WarmStartResult(0.0, 1)

    monkeypatch.setattr(module, "gradient_matching", poisoned)
    m = simulate_measurements("lotka_volterra", noise=0.05, n_times=21)
    result = fit("lotka_volterra", m, max_epochs=3, warm_start_steps=10, fit_cycles=1)
    assert result.metrics["warm_start_discarded"]  # the solver's reason
    assert result.metrics["stop_reason"] is None and result.metrics["epochs"] == 3
    assert np.isfinite(result.metrics["train_nmse"])
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def _last_layers(model):
    return [last_layer(net) for net in model.networks]


def test_a_warm_start_whose_model_cannot_be_solved_is_damped_to_the_factor_that_fits_best(
    monkeypatch,
):
    """A warm start that overshoots (its network output doubled) and is said not to solve:
    the line search over the damping factors keeps the one that undoes the overshoot."""
    import ude.train.module as module
    from ude.fit import fit

    real = module.gradient_matching
    kept = {}

    def overshoots(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        with torch.no_grad():
            for last in _last_layers(model):
                kept[id(last)] = (last.weight.clone(), last.bias.clone())
                last.weight.mul_(2.0)
                last.bias.mul_(2.0)
        return result

    seen = []

    def damped(self, before):
        damp(self, before)
        seen.extend((last.weight.clone(), last.bias.clone()) for last in _last_layers(self.model))

    damp = module.UDEModule._damp_warm_start
    monkeypatch.setattr(module, "gradient_matching", overshoots)
    monkeypatch.setattr(module.UDEModule, "_solve_failure", lambda self: "said not to solve")
    monkeypatch.setattr(module.UDEModule, "_damp_warm_start", damped)
    m = simulate_measurements("lotka_volterra", noise=0.05, n_times=21)
    result = fit("lotka_volterra", m, max_epochs=1, warm_start_steps=500)
    assert result.metrics["warm_start_damping"] == 0.5, result.metrics
    assert "warm_start_discarded" not in result.metrics
    # training started from the warm start's own network output
    (weight, bias), (w0, b0) = seen[0], next(iter(kept.values()))
    torch.testing.assert_close(weight, w0)
    torch.testing.assert_close(bias, b0)


def test_initial_values_the_data_give_stay_exactly_as_given():
    """DESIGN: a conditions table's init_<state> values stay fixed. The warm start sets every
    other initial state from the smoothed data, and training must not move the given ones."""
    from ude.fit import fit

    m = simulate_measurements("lotka_volterra", noise=0.1, n_times=21, known_initial=["x"])
    m.initial["x"] = np.array([0.6])  # given, and not where the noisy first sample lies
    result = fit("lotka_volterra", m, max_epochs=5, warm_start_steps=50)
    assert result.module.warm_started and not result.metrics.get("warm_start_discarded")
    initial = result.model.initial.detach().numpy()
    assert initial[0, 0] == 0.6  # exactly: no step of any optimiser moved it
    smoothed = smooth_states(m, ["x", "y"]).initial[0, 1]
    assert initial[0, 1] != m.values[0, 0, 0, 1]  # y's was learned: from the smoothed value
    assert abs(initial[0, 1] - smoothed) < 0.1 * abs(smoothed)


def _warm_start_inputs(system: str, noise: float, **scenario):
    """The benchmark's base problem of ``system`` at ``noise``: its hybrid as ``python
    train.py`` builds it (untrained) and the smoothed data the warm start fits."""
    import pytorch_lightning as pl

    from ude.benchmark.methods import composed_config
    from ude.benchmark.scenario import Scenario, build_problem
    from ude.runs import build_model

    problem = build_problem(Scenario(system, noise=noise, seed=0, library="default", **scenario))
    pl.seed_everything(0, verbose=False)
    model, module = build_model(composed_config(problem, []), problem.known, problem.measurements)
    return model, module.smoothed, problem.measurements


def test_a_warm_start_stuck_on_a_plateau_runs_another_cycle():
    """Goodwin's repression is a Hill switch of n = 10: for hundreds of steps the network sits
    on the flat solution (the loss still at half its first value) before it finds the switch.
    One cosine cycle of 500 steps decays the rate before that happens; a second cycle from the
    full rate finds it."""
    from ude.fit import truth_errors

    model, smoothed, m = _warm_start_inputs("goodwin", 0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    one = gradient_matching(model, smoothed, steps=500, cycles=1)
    flat = truth_errors(model, m)["missing_term_rel_rmse"]["x"]
    model.load_state_dict(state)
    more = gradient_matching(model, smoothed, steps=500, cycles=4)
    found = truth_errors(model, m)["missing_term_rel_rmse"]["x"]
    assert one.cycles == 1 and more.cycles >= 2
    assert more.loss < 0.2 * one.loss, (one, more)
    assert flat > 0.7 and found < 0.4, (flat, found)


def test_a_warm_start_that_makes_progress_runs_one_cycle_exactly_as_before():
    model, smoothed, _ = _warm_start_inputs("lotka_volterra", 0.05)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    one = gradient_matching(model, smoothed, steps=500, cycles=1)
    after_one = [p.detach().clone() for p in model.parameters()]
    model.load_state_dict(state)
    capped = gradient_matching(model, smoothed, steps=500, cycles=4)
    assert capped.cycles == 1 and capped.loss == one.loss
    assert all(torch.equal(a, b) for a, b in zip(after_one, model.parameters(), strict=True))


def test_a_warm_start_creeping_along_the_flat_solution_runs_another_cycle():
    """Goodwin with 2 replicates (the benchmark's cell): the first cycle's loss still falls
    (5 % over its second half, no plateau) but stays at 60 % of its start, on the flat
    solution; a second cycle finds the switch."""
    from ude.fit import truth_errors

    model, smoothed, m = _warm_start_inputs("goodwin", 0.05, replicates=2, n_times=30)
    found = gradient_matching(model, smoothed, steps=500, cycles=4)
    assert found.cycles == 2, found
    assert truth_errors(model, m)["missing_term_rel_rmse"]["x"] < 0.2


def test_restarts_that_gain_nothing_stop_before_the_cycle_cap():
    """A fit that cannot move (here a rate of zero: no step changes the loss) ends its first
    cycle on a plateau; the second cycle gains nothing over it, and no third or fourth is
    run (yeast glycolysis with ATP latent spent four cycles, 2,000 steps of the latent path,
    within 0.01 % of one loss)."""
    m = _clean_lv()
    model = build_hybrid("lotka_volterra", m, Solver())
    result = gradient_matching(model, smooth_states(m, ["x", "y"]), steps=20, lr=0.0, cycles=4)
    assert result.cycles == 2, result


def _goodwin_without_z(noise: float, n_times: int):
    """Goodwin's data with the repressor z unmeasured, its hybrid (float64, untrained) and
    the smoothed data."""
    m = simulate_measurements("goodwin", noise=noise, n_times=n_times, observed=["x", "y"])
    torch.set_default_dtype(torch.float64)
    try:
        model = build_hybrid("goodwin", m, Solver())
    finally:
        torch.set_default_dtype(torch.float32)
    return m, model, smooth_states(m, ["x", "y", "z"])


def test_a_latent_state_s_path_is_integrated_along_the_smoothed_data():
    """z' = e*y - f*z is known: from its true initial value along the smoothed y, the
    reconstructed path is the true z (the network, untrained, does not enter z's equation)."""
    m, model, smoothed = _goodwin_without_z(noise=0.0, n_times=31)
    assert smoothed.latent.tolist() == [False, False, True]
    assert np.isnan(smoothed.y[:, 2]).all() and np.isfinite(smoothed.y[:, :2]).all()
    paths = LatentPaths(model, smoothed)
    with torch.no_grad():
        paths.start[:, 2] = float(m.truth.initial[0, 2])
        y = torch.as_tensor(smoothed.y)
        cond = torch.as_tensor(smoothed.condition)
        z = paths.states(y, model.context(cond))[:, 2].numpy()
    true = simulate_spec(m.truth.spec, m.truth.initial, smoothed.time)[0, :, 2]
    assert np.abs(z - true).max() < 0.01 * np.abs(true).max()
    assert torch.equal(paths.states(y, model.context(cond))[:, :2], y[:, :2])


def test_a_latent_state_s_feedback_is_learned_by_gradient_matching():
    """With z unmeasured, the network learns the repression a/(1 + z^10) of x from the
    measured states' residuals alone, and z's initial value with it (about 20 s of CPU)."""
    torch.manual_seed(0)
    m, model, smoothed = _goodwin_without_z(noise=0.01, n_times=21)
    result = gradient_matching(model, smoothed, steps=600, lr=1e-2, cycles=2)
    assert np.isfinite(result.loss)
    true_states = simulate_spec(m.truth.spec, m.truth.initial, m.times)
    learned, true = missing_terms(model, m, true_states)
    rel = np.sqrt(((learned - true) ** 2).mean() / (true**2).mean())
    assert rel < 0.2, rel
    z0 = model.initial.detach().numpy()[0, 2]
    assert abs(z0 - m.truth.initial[0, 2]) < 0.15 * m.truth.initial[0, 2], z0


def test_a_latent_path_that_cannot_be_integrated_leaves_the_model_as_it_was():
    """A latent path that is not finite from the first step (here an infinite start; stiff
    kinetics under the explicit step do the same) teaches nothing: no step is taken and the
    networks and initial states stay as they were, for trajectory fitting to start from."""
    m, model, smoothed = _goodwin_without_z(noise=0.0, n_times=21)
    with torch.no_grad():
        model.initial[:, 2] = float("inf")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = gradient_matching(model, smoothed, steps=50)
    assert result.cycles == 0 and not np.isfinite(result.loss)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_latent_path_that_blows_up_after_some_steps_stops_the_warm_start(monkeypatch):
    """The steps taken while the latent path was finite are kept; the first that is not
    ends the warm start (nothing could move after it)."""
    m, model, smoothed = _goodwin_without_z(noise=0.0, n_times=21)
    calls = []
    states = LatentPaths.states

    def blows_up_at_the_fourth(self, y, context):
        calls.append(1)
        out = states(self, y, context)
        return out * float("nan") if len(calls) >= 4 else out

    monkeypatch.setattr(LatentPaths, "states", blows_up_at_the_fourth)
    before = [p.clone() for p in model.networks.parameters()]
    result = gradient_matching(model, smoothed, steps=50, cycles=3)
    assert len(calls) == 4 and result.cycles == 1 and not np.isfinite(result.loss)
    after = list(model.networks.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))  # 3 steps
