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


def test_a_twin_that_fails_before_its_first_output_time_is_nan_not_a_crash():
    # with only t=0 and t=5 asked for, the solve stops (x = 1/(1-t) leaves every bound near
    # t=1) before it reaches an output time: scipy then returns no points at all
    spec = ModelSpec.from_dict({"states": ["x"], "equations": {"x": "x**2"}})
    out = simulate_spec(spec, np.array([[1.0], [-1.0]]), np.array([0.0, 5.0]))
    assert out[0, 0, 0] == 1.0 and np.isnan(out[0, 1, 0])
    # the other condition decays as 1/(1+t) and is not touched by the first one's failure
    np.testing.assert_allclose(out[1, :, 0], [-1.0, -1.0 / 6.0], rtol=1e-6)
