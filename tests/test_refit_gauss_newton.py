"""A stiff twin's refit by Gauss-Newton steps (``TwinRefit(optimizer="gauss_newton")``): its
Jacobian by differences on replayed steps, the conditions' initial states moved together, and
the optimum it reaches against L-BFGS's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_uq_laplace_band import three_condition_problem, three_condition_twin
from ude.distill import TwinRefit
from ude.distill import gauss_newton as gn
from ude.distill.refit import _batch
from ude.fit import make_module


def _residuals(model, data):
    module, batch = make_module(model, data, loss="nll"), _batch(data)
    params = [p for p in module.parameters() if p.requires_grad and p is not model.log_noise]
    return gn._Residuals(module, batch, params), module, batch


def test_the_jacobian_gives_the_nll_s_exact_gradient(float64):
    """``J^T r`` over the free entries (rates, constant, the three conditions' initial states,
    these moved together per state) is the autograd gradient of the summed NLL."""
    model, data = three_condition_twin()
    residuals, module, batch = _residuals(model, data)
    assert len(residuals.colours) == 3 + 2  # k, v, K alone; x0 and y0 of all conditions
    e0, J = residuals.jacobian(residuals.vector())
    scale = residuals.scale()
    by_differences = (J / scale[:, None]).T @ (e0 / scale)
    loss = module.losses(batch)["loss"] * batch["mask"].sum()
    parts = torch.autograd.grad(loss, residuals.params)
    exact = torch.cat([d.reshape(-1) for d in parts])[residuals.free_index]
    np.testing.assert_allclose(by_differences, exact, rtol=1e-4, atol=1e-5 * exact.abs().max())


def test_moving_the_conditions_together_gives_the_jacobian_entry_by_entry(float64, monkeypatch):
    model, data = three_condition_twin()
    residuals, _, _ = _residuals(model, data)
    theta = residuals.vector()
    _, together = residuals.jacobian(theta)
    residuals.colours = [[i] for i in range(len(residuals.free))]
    _, alone = residuals.jacobian(theta)
    assert (together != 0).sum() < together.numel()  # a condition's column: its rows only
    np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-9 * alone.abs().max())


def test_gauss_newton_reaches_l_bfgs_s_optimum_in_a_tenth_of_the_iterations(float64):
    """From the start (``gauss_newton_after=0``)."""
    spec, data = three_condition_problem()
    start = np.array([[0.8, 0.1], [0.6, 0.4], [0.3, 1.2]])
    fits = {
        opt: TwinRefit(
            max_iter=400, tol=1e-10, method="rodas5p", optimizer=opt, gauss_newton_after=0
        ).fit(spec, data, start, noise=np.array([0.1, 0.1]))
        for opt in ("lbfgs", "gauss_newton")
    }
    lbfgs, newton = fits["lbfgs"], fits["gauss_newton"]
    assert lbfgs.ok and newton.ok
    assert newton.iterations * 10 <= lbfgs.iterations
    n = newton.n_points
    assert newton.trace[-1] <= lbfgs.trace[-1] + 1e-3  # twice the summed NLL: no worse
    assert n * np.log(newton.nmse) == pytest.approx(n * np.log(lbfgs.nmse), abs=0.05)
    for name in ("k", "v", "K"):
        assert newton.values[name] == pytest.approx(lbfgs.values[name], rel=1e-3)
    # the noise levels at their optimum given the rest: the NLL's slope in them is zero
    module, batch = make_module(newton.model, data, loss="nll"), _batch(data)
    module.losses(batch)["loss"].backward()
    assert newton.model.log_noise.grad.abs().max() < 1e-6


def test_where_the_solves_do_not_replay_the_refit_is_l_bfgs_s(float64):
    """dopri5 (torch) records no steps: the refit takes L-BFGS's path, the same numbers."""
    spec, data = three_condition_problem()
    kw = dict(max_iter=40, method="dopri5", rtol=1e-5, atol=1e-7)
    lbfgs = TwinRefit(**kw).fit(spec, data)
    newton = TwinRefit(**kw, optimizer="gauss_newton").fit(spec, data)
    assert not gn.applies(newton.model)
    assert newton.iterations == lbfgs.iterations and newton.trace == lbfgs.trace
    assert newton.values == lbfgs.values


def test_an_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="optimizer='newton'"):
        TwinRefit(optimizer="newton")


def test_a_gauss_newton_refit_that_did_not_converge_goes_on_with_l_bfgs(float64):
    """Two Gauss-Newton iterations from a poor start are not convergence: L-BFGS takes over
    from where they stopped and reaches the optimum."""
    spec, data = three_condition_problem()
    start = np.array([[0.8, 0.1], [0.6, 0.4], [0.3, 1.2]])
    kw = dict(max_iter=400, tol=1e-10, method="rodas5p", gauss_newton_after=0)
    newton = TwinRefit(**kw, optimizer="gauss_newton").fit(spec, data, start)
    capped = TwinRefit(**kw, optimizer="gauss_newton", gauss_newton_iter=2).fit(spec, data, start)
    assert capped.ok and capped.iterations > 2 + 20  # two of its own, then L-BFGS steps
    assert capped.trace[:2] == newton.trace[:2]
    assert capped.trace[-1] == pytest.approx(newton.trace[-1], abs=1e-3)


def test_by_default_l_bfgs_takes_the_first_steps_then_gauss_newton_ends_the_refit(float64):
    spec, data = three_condition_problem()
    start = np.array([[0.8, 0.1], [0.6, 0.4], [0.3, 1.2]])
    kw = dict(max_iter=400, tol=1e-10, method="rodas5p")
    lbfgs = TwinRefit(**kw).fit(spec, data, start)
    both = TwinRefit(**kw, optimizer="gauss_newton", gauss_newton_after=40).fit(spec, data, start)
    assert both.trace[:2] == lbfgs.trace[:2]  # L-BFGS's two steps of 20, as alone
    assert both.iterations < 40 + 10 < lbfgs.iterations  # then a few Gauss-Newton steps
    assert both.trace[-1] <= lbfgs.trace[-1] + 1e-6


def test_auto_ends_with_gauss_newton_over_several_conditions_and_is_l_bfgs_over_one(float64):
    """``optimizer="auto"`` (the selection's default): the three conditions' refit takes
    Gauss-Newton's path, the first condition's alone L-BFGS's, each to the same numbers."""
    from dataclasses import replace

    spec, data = three_condition_problem()
    one = replace(data, values=data.values[:1], conditions=data.conditions[:1], inputs=None)
    start = np.array([[0.8, 0.1], [0.6, 0.4], [0.3, 1.2]])
    kw = dict(max_iter=400, tol=1e-10, method="rodas5p", gauss_newton_after=40)
    for measured, y0, same in ((data, start, "gauss_newton"), (one, start[:1], "lbfgs")):
        auto = TwinRefit(**kw, optimizer="auto").fit(spec, measured, y0)
        other = "lbfgs" if same == "gauss_newton" else "gauss_newton"
        fits = {o: TwinRefit(**kw, optimizer=o).fit(spec, measured, y0) for o in (same, other)}
        assert auto.ok and auto.trace == fits[same].trace
        assert auto.iterations == fits[same].iterations != fits[other].iterations


def test_a_step_plan_fixes_the_steps_of_its_own_thread_only(float64):
    """The selection refits in threads: one refit's recorded steps must not be another's."""
    import threading

    from ude.model.rodas_autograd import fixed_steps

    model, data = three_condition_twin()
    module, batch = make_module(model, data, loss="nll"), _batch(data)
    other = []
    with fixed_steps(each=True) as plan:
        worker = threading.Thread(target=lambda: other.append(float(module.losses(batch)["loss"])))
        worker.start()
        worker.join()
        assert other and not plan.steps and plan.exact  # the thread's solve left it alone
        module.losses(batch)
        assert len(plan.steps) == 1 and len(plan.steps[0][1]) == 3  # each condition's steps
