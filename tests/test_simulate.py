import time

import numpy as np

from ude.spec import ModelSpec, simulate_spec


def test_a_twin_that_blows_up_in_finite_time_returns_nan_quickly():
    # dx/dt = x**2 from x(0)=1 is 1/(1-t): it leaves every bound before t=1.
    spec = ModelSpec.from_dict({"states": ["x"], "equations": {"x": "x**2"}})
    times = np.linspace(0.0, 5.0, 51)
    start = time.perf_counter()
    out = simulate_spec(spec, np.array([[1.0]]), times)[0, :, 0]
    assert time.perf_counter() - start < 30  # a stiff solver chasing the pole would not return
    before = times < 0.9
    np.testing.assert_allclose(out[before], 1.0 / (1.0 - times[before]), rtol=1e-6)
    assert np.isnan(out[times >= 1.0]).all()
