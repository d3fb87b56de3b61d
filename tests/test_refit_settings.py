"""``bench/refit_settings.py`` replays a cell's refits as they ran and under other settings:
the base replay must reproduce each captured criterion, and a variant's changes be measured
refit by refit."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_refit_trace import twin
from ude.benchmark.scenario import Scenario, build_problem
from ude.distill import TwinRefit


def _bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "refit_settings.py"
    spec = importlib.util.spec_from_file_location("refit_settings", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["refit_settings"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_the_base_replay_reproduces_each_captured_refit_and_a_variant_is_measured_against_it():
    bench = _bench()
    data = build_problem(Scenario(system="goldbeter", seed=0)).measurements
    start = np.asarray(data.truth.initial) * 1.1
    other = build_problem(Scenario(system="goldbeter", seed=1)).measurements
    original = TwinRefit.fit
    with bench.capturing(data) as calls:
        TwinRefit(max_iter=60, tol=0.0, method="rodas5p").fit(twin(Kd=0.2), data, start)
        TwinRefit(max_iter=20, tol=0.0, method="rodas5p").fit(twin(Kd=0.2), other, start)
    assert TwinRefit.fit is original  # restored
    assert len(calls) == 1  # a refit on other data is not the cell's
    assert calls[0].settings["max_iter"] == 60 and np.isfinite(calls[0].criterion)
    ((base, seconds),) = bench.replay(calls, data, {})
    assert base == calls[0].criterion and seconds > 0
    ((shorter, _),) = bench.replay(calls, data, {"max_iter": 20})
    assert shorter > base  # 40 iterations fewer: the refit stopped higher
    moved = bench.compare([base], [shorter], tolerance=6.0)
    assert moved["max_moved"] == pytest.approx(shorter - base) and moved["same_best"]
    with pytest.raises(SystemExit, match="no setting"):
        bench.replay(calls, data, {"max_iterations": 20})


def test_a_variant_is_read_as_typed_settings_and_compared_refit_by_refit():
    bench = _bench()
    assert bench.parse_variant("criterion_tol=1.0,rtol=1e-5,settle_first=false") == {
        "criterion_tol": 1.0,
        "rtol": 1e-5,
        "settle_first": False,
    }
    with pytest.raises(SystemExit, match="key=value"):
        bench.parse_variant("rtol")
    base, other = [-100.0, -90.0, np.inf, -40.0], [-95.0, -97.0, -50.0, -40.0]
    c = bench.compare(base, other, tolerance=6.0)
    assert c["solved"] == 3 and c["failed_apart"] == 1
    assert c["max_moved"] == c["max_moved_near"] == 7.0 and c["over_tolerance"] == 1
    assert not c["same_best"]  # the second refit is now the best
    assert not c["same_near_set"]  # and the first is within 6 of it, where it was alone
