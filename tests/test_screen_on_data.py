"""A trained model that misses its data is no guide to the terms: the distillation screens
along the data's own smoothed path instead (ude.distill.integral.data_path,
ude.distill.distiller.failed_fit: worse than the data's means, or residuals more than twice
the noise that ude.data.noise_level estimates from the data alone), and the summary says so."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ude import simulate_measurements
from ude.data.noise_level import difference_variance
from ude.distill.cli import summary
from ude.distill.distiller import MISFIT_RATIO, failed_fit, misfit_ratio
from ude.distill.integral import data_path
from ude.fit import predict
from ude.model import Solver, build_hybrid
from ude.systems import get_system


def test_the_datas_path_follows_the_truth_where_every_state_is_measured():
    m = simulate_measurements("lotka_volterra", noise=0.05, n_times=31, seed=0)
    along, initial = data_path(m, ["x", "y"])
    t = np.linspace(m.times[0], m.times[-1], 200)
    states = along(t)
    assert states.shape == (m.n_conditions, 200, 2)
    truth = simulate_measurements("lotka_volterra", noise=0.0, n_times=200, seed=0)
    scale = np.ptp(truth.values[..., 0, :], axis=1)
    error = np.abs(states - truth.values[..., 0, :]).max(axis=1) / scale
    assert error.max() < 0.05  # 5 % noise, smoothed (measured: 2.3 % of the range at most)
    np.testing.assert_allclose(initial, truth.values[:, 0, 0, :], rtol=0.05)


def test_no_path_of_the_data_when_a_state_is_latent():
    m = simulate_measurements("lotka_volterra", noise=0.05, n_times=31, observed=["x"], seed=0)
    assert data_path(m, ["x", "y"]) is None


def test_a_model_that_misses_its_data_is_called_failed():
    m = simulate_measurements("lotka_volterra", noise=0.05, n_times=31, seed=0)
    truth = get_system("lotka_volterra").truth
    assert not failed_fit(build_hybrid(truth, m, Solver("dopri5")), m)
    params = dict(truth.parameters)
    params["alpha"] = replace(params["alpha"], value=-1.3)  # the prey dies out
    wrong = replace(truth, parameters=params)
    assert failed_fit(build_hybrid(wrong, m, Solver("dopri5")), m)


def test_the_summary_says_when_the_screen_ran_on_the_data():
    metrics = {"discovered": {"x": "-0.9*x*y"}, "timings": {"total_seconds": 1.0}}
    assert "TRAINING MISSED" not in summary({**metrics, "screened_on": "model"})
    assert "TRAINING MISSED THE DATA" in summary({**metrics, "screened_on": "data"})


def test_a_model_that_misses_the_dynamics_within_the_datas_variance_is_called_failed():
    # the prey's growth a fifth too slow: the cycle's period slips, and the trajectories
    # miss the data by several times their noise while leaving under half their variance
    m = simulate_measurements("lotka_volterra", noise=0.05, n_times=31, seed=0)
    truth = get_system("lotka_volterra").truth
    params = dict(truth.parameters)
    params["alpha"] = replace(params["alpha"], value=0.8 * params["alpha"].value)
    slow = build_hybrid(replace(truth, parameters=params), m, Solver("dopri5"))
    _, observed = predict(slow, m.times)
    variance_share = np.mean(
        [
            np.nanmean((m.values[..., o] - observed[:, :, None, o]) ** 2)
            / np.nanvar(m.values[..., o])
            for o in range(2)
        ]
    )
    assert variance_share < 1.0  # the old rule alone would have trusted its path
    assert misfit_ratio(m, observed) > MISFIT_RATIO
    assert failed_fit(slow, m)
    _, exact = predict(build_hybrid(truth, m, Solver("dopri5")), m.times)
    assert misfit_ratio(m, exact) < 2.0


def test_the_noise_level_is_estimated_from_the_data_alone():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 10, 60))
    sd = np.array([0.05, 0.2])
    clean = np.stack([np.sin(t), 2 + np.cos(0.5 * t)], axis=-1)
    values = (clean + sd * rng.standard_normal((4, 60, 2)))[:, :, None, :]
    m = simulate_measurements("lotka_volterra", noise=0.0, n_times=60, seed=0)
    m = replace(m, times=t, values=values, inputs=np.zeros((4, m.inputs.shape[1])))
    np.testing.assert_allclose(np.sqrt(difference_variance(m)), sd, rtol=0.15)
    # a switch between two samples in each series moves the median, not by much
    jumped = values.copy()
    jumped[:, 30:, 0, 0] += 1.0
    np.testing.assert_allclose(
        np.sqrt(difference_variance(replace(m, values=jumped)))[0], sd[0], rtol=0.2
    )


def test_the_misfit_limit_is_a_setting_checked_before_training(tmp_path):
    from conftest import compose_config

    from ude.config_check import check_config
    from ude.distill import Distiller
    from ude.errors import UdeError

    cfg = compose_config(tmp_path, ["distill.distiller.misfit_ratio=-1"])
    with pytest.raises(UdeError, match="distill.distiller.misfit_ratio"):
        check_config(cfg)
    assert Distiller(misfit_ratio=9).misfit_ratio == 9.0
    with pytest.raises(ValueError, match="misfit_ratio"):
        Distiller(misfit_ratio=0)


def test_swaps_of_a_model_that_missed_its_data_are_matched_along_the_refitted_twin(monkeypatch):
    """Screened on the data's smoothed path, a first-order swap's coefficients are matched
    along the best refitted twin's trajectory, not along that noisy path (yeast glycolysis at
    30 % noise: the true ``-c*S6`` matched on the data's path at 2.2 times its rate refitted
    into a basin 207 units behind, matched along the best twin's at 1.2 times it was found)."""
    from ude.distill import Distiller, TrajectorySelector
    from ude.distill import distiller as distiller_module

    m = simulate_measurements("lotka_volterra", noise=0.05, n_times=31, seed=0)
    untrained = build_hybrid(get_system("lotka_volterra").known, m, Solver("dopri5"))
    assert failed_fit(untrained, m)
    along_twin, swapped_on = set(), []
    build, swaps = distiller_module.integral_problems, distiller_module.first_order_swaps

    def integral_problems(model, measurements, libraries, trajectory=None, *args, **kwargs):
        out = build(model, measurements, libraries, trajectory, *args, **kwargs)
        if trajectory is not None:
            along_twin.add(id(out))
        return out

    def first_order_swaps(best, terms, integral, *args, **kwargs):
        swapped_on.append(id(integral) in along_twin)
        return swaps(best, terms, integral, *args, **kwargs)

    monkeypatch.setattr(distiller_module, "integral_problems", integral_problems)
    monkeypatch.setattr(distiller_module, "first_order_swaps", first_order_swaps)
    selector = TrajectorySelector(max_refits=4, siblings=0, rivals=0, reswaps=0)
    distiller = Distiller(selector=selector, identify=False, oracle=False, bootstrap=None)
    found = distiller.fit(untrained, m)
    assert found.screened_on == "data"
    assert swapped_on and all(swapped_on)
