"""TwinRefit's ``settle_first``: besides the joint fit, the twin's parameters fitted with the
initial states held before all together, the better of the two kept. On an oscillator the
initial states are the steepest directions, and L-BFGS on everything at once leaves a rate law's
constant where it began; settling alone can end in a worse optimum.

Goldbeter's mitotic oscillator, the benchmark's 4-condition scenario (5 % noise), its cyclin
degradation ``vd*X*C/(Kd + C)`` refitted from ``Kd = 0.2`` (the truth: 0.02) and initial
states 10 % off the truth's (a start that already fits, as the distillation's candidates have).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ude.benchmark.scenario import Scenario, build_problem
from ude.distill import TwinRefit
from ude.distill.refit import RefitResult
from ude.spec import ModelSpec
from ude.systems import get_system


def twin(**values: float) -> ModelSpec:
    truth = get_system("goldbeter").truth
    params = dict(truth.parameters)
    for name, value in values.items():
        params[name] = replace(params[name], value=value, learn=True, min=1e-4, max=10.0)
    return ModelSpec(**{**truth.__dict__, "parameters": params})


def test_settling_first_finds_the_constant_the_joint_fit_leaves():
    problem = build_problem(Scenario(system="goldbeter", seed=0, conditions=4))
    data = problem.measurements
    start = np.asarray(data.truth.initial) * 1.1
    results = {}
    for settle in (True, False):
        refit = TwinRefit(criterion_tol=0.1, method="rodas5p", settle_first=settle)
        results[settle] = refit.fit(twin(Kd=0.2, vd=0.25), data, initial=start)
    settled, joint = results[True], results[False]
    assert settled.ok and joint.ok
    # measured: Kd 0.033, vd 0.247, NMSE 0.0148 settled; Kd 0.179, NMSE 0.037 jointly
    assert settled.values["Kd"] == pytest.approx(0.02, rel=0.75)
    assert settled.values["vd"] == pytest.approx(0.25, rel=0.1)
    assert joint.values["Kd"] > 0.1
    assert settled.nmse < 0.5 * joint.nmse


def test_the_twins_final_refit_settles_first(make_cfg):
    """The distillation's final refit (``distill.distiller.refit`` as ``python train.py``
    composes it, with a stiff model's solver) settles too: from a constant that is off, it
    reaches the optimum that the joint fit alone stops short of."""
    from hydra.utils import instantiate

    refit = instantiate(make_cfg("solver=rodas5p").distill.distiller.refit)
    data = build_problem(Scenario(system="goldbeter", seed=0, conditions=4)).measurements
    start = np.asarray(data.truth.initial) * 1.1
    found = refit.fit(twin(Kd=0.2, vd=0.25), data, initial=start)
    assert found.ok
    # measured: Kd 0.0229, vd 0.2504; the joint fit alone (the default before) left Kd at 0.108
    assert found.values["Kd"] == pytest.approx(0.02, rel=0.75)
    assert found.values["vd"] == pytest.approx(0.25, rel=0.1)


@pytest.mark.parametrize(
    ("joint", "settled", "kept"),
    [
        (0.03, 0.01, "settled"),  # Goldbeter's K: settling finds it
        (0.01, 0.03, "joint"),  # Goodwin's n at 10 % noise: settling ends on its bound
        (0.03, np.inf, "joint"),  # the settled fit failed to solve
    ],
)
def test_settle_first_keeps_the_better_of_the_settled_and_the_joint_refit(
    monkeypatch, joint, settled, kept
):
    results = {False: joint, True: settled}
    calls = []

    def fake_fit(self, *args, settle):
        calls.append(settle)
        nmse = results[settle]
        return RefitResult(None, {"which": settle}, nmse, 60, bool(np.isfinite(nmse)), 0)

    monkeypatch.setattr(TwinRefit, "_fit", fake_fit)
    out = TwinRefit(settle_first=True).fit(twin(), None)
    assert calls == [False, True]
    assert out.values["which"] == (kept == "settled")
    calls.clear()
    assert TwinRefit(settle_first=False).fit(twin(), None).values["which"] is False
    assert calls == [False]  # off: the joint fit alone


def test_the_twins_final_refit_restarts_where_lbfgs_stalls(make_cfg):
    """Settled, the final refit of Goldbeter's seed-6 draw stops with ``Kd`` where the selection
    left it (L-BFGS's history takes ever shorter steps); started again with a fresh history it
    goes on to the optimum (``distill.distiller.refit.restarts``, bench/final_refit.py)."""
    from hydra.utils import instantiate

    problem = build_problem(Scenario(system="goldbeter", seed=6, n_times=30))
    data = problem.measurements
    start = np.asarray(data.truth.initial, dtype=float)
    params = dict(problem.truth.parameters)  # vd learned in its own bounds, as the bench has it
    params["vd"] = replace(params["vd"], learn=True)
    params["Kd"] = replace(params["Kd"], value=0.0367, learn=True, min=1e-4, max=10.0)
    start_twin = replace(problem.truth, parameters=params)
    refit = instantiate(make_cfg("solver=rodas5p").distill.distiller.refit)
    assert refit.restarts > 0
    restarted = refit.fit(start_twin, data, initial=start)
    refit.restarts = 0
    stalled = refit.fit(start_twin, data, initial=start)
    # measured: Kd 0.0221, NLL -380.34 restarted; Kd 0.0367, NLL -346.24 without
    assert restarted.ok and stalled.ok
    assert stalled.values["Kd"] == pytest.approx(0.0367, rel=0.01)
    assert restarted.values["Kd"] == pytest.approx(0.02, rel=0.25)
    assert restarted.trace[-1] < stalled.trace[-1] - 20


def test_restarts_go_on_while_each_start_gains(monkeypatch):
    """Each restart runs L-BFGS afresh; they stop at the first that gains no more than
    ``restart_gain`` in criterion units, or after ``restarts``."""
    gains = iter([5.0, 1.0, 0.05, 3.0])
    calls = []

    def fake_lbfgs(self, module, batch, params, done, trace, limit, start=None):
        calls.append(limit)
        trace.append(trace[-1] - next(gains))
        return done + 40, True

    monkeypatch.setattr(TwinRefit, "_lbfgs", fake_lbfgs)
    trace = [-100.0]
    done = TwinRefit(restarts=5, restart_gain=0.1)._restart(None, None, [], 400, trace)
    assert trace == [-100.0, -105.0, -106.0, -106.05]  # the third gained 0.05: the last
    assert done == 520 and calls == [400, 400, 400]
    trace = [-100.0]
    TwinRefit(restarts=1)._restart(None, None, [], 0, trace)
    assert len(trace) == 2  # at most `restarts`
    trace = [-100.0]
    TwinRefit()._restart(None, None, [], 0, trace)
    assert trace == [-100.0]  # off by default
    with pytest.raises(ValueError, match="restarts"):
        TwinRefit(restarts=-1)


def test_the_final_refit_restarts_only_a_twin_with_rate_law_constants():
    """A support with a Michaelis-Menten or Hill term keeps the restarts; one linear in its
    coefficients (mass action) goes without them: it has no constant to free, and the restarts
    were measured only where one was stuck (bench/final_refit.py)."""
    from ude.distill.distiller import final_refitter
    from ude.distill.library import slot_library
    from ude.spec.library_key import DEFAULT_FAMILIES

    lib = slot_library(DEFAULT_FAMILIES, ["x", "y"])
    lib.fit(["x", "y"])
    terms = {"x": lib.terms_}
    saturating = next(j for j, t in enumerate(lib.terms_) if t.free)
    linear = next(j for j, t in enumerate(lib.terms_) if t.name == "x*y")
    refit = TwinRefit(restarts=3)
    coef = np.zeros(len(lib.terms_))
    coef[[linear, saturating]] = 1.0
    assert final_refitter(refit, {"x": coef}, terms) is refit
    coef[saturating] = 0.0
    plain = final_refitter(refit, {"x": coef}, terms)
    assert plain.restarts == 0 and refit.restarts == 3  # a copy: the config's refit unchanged
    assert plain.settle_first == refit.settle_first and plain.max_iter == refit.max_iter
