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
