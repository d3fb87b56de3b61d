"""A refit keeps its criterion trace: twice the summed NLL at the end of each L-BFGS step of
20 iterations, which ``bench/refit_convergence.py`` reads to tell a converged refit from one its
iteration cap stopped."""

from __future__ import annotations

import numpy as np

from tests.test_refit_settle import twin
from ude.benchmark.scenario import Scenario, build_problem
from ude.distill import TwinRefit


def test_a_refit_traces_its_criterion_once_per_step_and_it_never_rises():
    data = build_problem(Scenario(system="goldbeter", seed=0)).measurements
    start = np.asarray(data.truth.initial) * 1.1
    capped = TwinRefit(max_iter=60, tol=0.0, method="rodas5p").fit(twin(Kd=0.2), data, start)
    assert capped.ok and len(capped.trace) * 20 == capped.iterations == 60
    assert np.all(np.diff(capped.trace) <= 1e-9 * np.abs(capped.trace[:-1]))
    assert capped.trace[-1] < capped.trace[0]  # the refit moved
    longer = TwinRefit(max_iter=200, tol=0.0, method="rodas5p").fit(twin(Kd=0.2), data, start)
    # the same steps, then more: the capped refit's trace is the longer one's beginning
    np.testing.assert_allclose(longer.trace[:3], capped.trace, rtol=1e-8)


def test_the_trace_holds_the_loss_with_its_gradient_taken():
    """The trace's values are evaluated without a gradient (the solve records no stages);
    the same point's loss evaluated as L-BFGS does, with its gradient, is the same number."""
    import torch

    from ude.distill.refit import _batch, _loss_value
    from ude.fit import make_module

    data = build_problem(Scenario(system="goldbeter", seed=0)).measurements
    start = np.asarray(data.truth.initial) * 1.1
    refit = TwinRefit(max_iter=40, tol=0.0, method="rodas5p").fit(twin(Kd=0.2), data, start)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        module, batch = make_module(refit.model, data, loss="nll"), _batch(data)
        loss = module.losses(batch)["loss"]
        loss.backward()  # the graph was built: the gradient path, not the no-grad one
        n = float(batch["mask"].sum())
        assert 2 * n * float(loss) == refit.trace[-1] == 2 * n * _loss_value(module, batch)
    finally:
        torch.set_default_dtype(previous)
