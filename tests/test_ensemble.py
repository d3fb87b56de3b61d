"""Ensembles (model.ensemble): independent models in one batched solve."""

from __future__ import annotations

import pytest
import torch

import ude
from tests.conftest import FAST
from ude.data.datamodule import ConditionDataset
from ude.errors import UdeError
from ude.fit import make_module
from ude.model.ensemble import HybridEnsemble
from ude.model.hybrid import build_hybrid
from ude.model.solver import Solver
from ude.train import job as train

DATA = ude.simulate_measurements(
    "lotka_volterra", initial=[[0.44, 4.6], [1.0, 2.0]], seed=0, n_times=16
)
TIMES = torch.tensor(DATA.times)
# rk4 on the data's grid: a member's arithmetic does not depend on the other members (an
# adaptive solver would share its step sizes among them)
RK4 = Solver("rk4")


def build(members: int, seed: int = 0, solver: Solver = RK4):
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.float64)
    try:
        return build_hybrid("lotka_volterra", DATA, solver, ensemble=members)
    finally:
        torch.set_default_dtype(torch.float32)


def batch() -> dict[str, torch.Tensor]:
    items = [ConditionDataset(DATA)[i] for i in range(DATA.n_conditions)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def test_members_are_independent_models_solved_together():
    ensemble, single = build(3), build(1)
    assert isinstance(ensemble, HybridEnsemble) and ensemble.n_members == 3
    cond = torch.arange(2)
    with torch.no_grad():
        together = ensemble.trajectories(TIMES, cond)  # (member, condition, time, state)
        assert together.shape == (3, 2, 16, 2)
        for i in range(3):
            alone = ensemble.member(i).simulate(TIMES, cond)
            torch.testing.assert_close(together[i], alone, rtol=1e-12, atol=1e-12)
        # member 0 is the model ensemble=1 builds from the same seed; the others differ
        torch.testing.assert_close(together[0], single.simulate(TIMES, cond))
        assert (together[1] - together[0]).abs().max() > 1e-3


@pytest.mark.parametrize("solver", [RK4, Solver("rodas5p")], ids=["rk4", "rodas5p"])
def test_each_member_gets_its_own_models_gradient(solver, monkeypatch):
    # rodas5p: each row (member, condition) in the compiled kernels on its own steps, with
    # its member's networks: a member alone takes the same steps
    from ude.model import rodas_kernels

    rows = []
    kernel = rodas_kernels.integrate_rows
    monkeypatch.setattr(
        rodas_kernels, "integrate_rows", lambda y0, *a: rows.append(len(y0)) or kernel(y0, *a)
    )
    ensemble = build(3, solver=solver)
    module = make_module(ensemble, DATA)
    module.losses(batch())["loss"].backward()
    for i in (0, 2):
        member = ensemble.member(i)
        alone = make_module(member, DATA)
        alone.losses(batch())["loss"].backward()
        for name, p in member.named_parameters():
            if p.grad is None:
                continue
            stacked = dict(ensemble.networks.items()) | dict(ensemble.learned.items())
            got = stacked[name.replace(".", "__")].grad[i]
            torch.testing.assert_close(got, p.grad, rtol=1e-9, atol=1e-12, msg=name)
    if solver.method == "rodas5p":
        assert rows[0] == 6  # the ensemble's 3 members x 2 conditions in one compiled solve


def test_gradients_are_clipped_member_by_member():
    module = make_module(build(2), DATA, grad_clip=1e-3)
    module.losses(batch())["loss"].backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    for g in grads:
        g[1] *= 1e-9  # member 1's gradient far under the limit, member 0's over it

    def norms() -> torch.Tensor:
        return torch.stack([g.reshape(2, -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()

    before = norms()
    assert before[0] > 1e-3 > before[1]
    module._clip_members()
    after = norms()
    # member 0 clipped to the limit, member 1 untouched (a global clip would shrink it too)
    assert after[0].item() == pytest.approx(1e-3, rel=1e-5)
    assert after[1].item() == pytest.approx(before[1].item(), rel=1e-12)


def test_an_ensemble_refuses_what_would_tie_its_members():
    with pytest.raises(UdeError, match="an ensemble trains with Adam on whole trajectories"):
        make_module(build(2), DATA, polish_epochs=2)
    with pytest.raises(UdeError, match="model.ensemble: got 0"):
        build(0)


def test_train_py_reports_the_best_member(make_cfg):
    metrics = train.train(make_cfg("model.ensemble=3", "solver=rk4", *FAST))
    info = metrics["ensemble"]
    assert info["members"] == 3 and len(info["train_nmse"]) == 3
    assert info["chosen"] == min(range(3), key=info["train_nmse"].__getitem__)
    # the reported model is that member: its error is the run's training error
    assert metrics["train_nmse"] == pytest.approx(info["train_nmse"][info["chosen"]], rel=1e-9)
    # the ensemble's band: every member solved, coverage of the true states reported, the
    # band for new data (observation noise added) at least as wide as the trajectories'
    band = metrics["ensemble_band"]
    assert band["members"] == 3 and band["n_failed"] == 0
    assert 0.0 <= band["coverage_of_truth"] <= band["predictive_coverage_of_truth"] <= 1.0
    assert band["mean_width"] > 0


def test_an_ensemble_on_rodas5p_takes_second_derivatives_on_the_generic_path():
    # the compiled solve is differentiable once; inside differentiable_twice the ensemble
    # takes the generic path, whose gradient is differentiable again
    from ude.model.rodas_autograd import differentiable_twice

    ensemble = build(2, solver=Solver("rodas5p"))
    weight = ensemble.networks["networks__0__layers__0__weight"]
    loss = ensemble.simulate(TIMES[:4], torch.arange(1)).pow(2).sum()
    (g,) = torch.autograd.grad(loss, weight, create_graph=False)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(
            ensemble.simulate(TIMES[:4], torch.arange(1)).pow(2).sum(), weight, create_graph=True
        )
    with differentiable_twice():
        loss = ensemble.simulate(TIMES[:4], torch.arange(1)).pow(2).sum()
        (g2,) = torch.autograd.grad(loss, weight, create_graph=True)
    # the generic path shares one step size over the rows: equal to the solver's tolerance
    torch.testing.assert_close(g2.detach(), g, rtol=1e-3, atol=1e-6)
    assert g2.requires_grad
