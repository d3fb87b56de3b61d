"""Doses: bolus jumps and infusions between solver segments, in every simulator, in training,
in the distillation's refits and in the warm start's smoothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import ude
from ude.data import read_measurements, write_wide
from ude.data.doses import Dose, dosed, segments
from ude.data.measurements import Measurements
from ude.distill import TwinRefit
from ude.model.doses import solve_with_doses
from ude.model.hybrid import build_hybrid
from ude.model.solver import Solver
from ude.spec import ModelSpec, simulate_spec
from ude.train.warm_start import smooth_states

K = 0.5
SPEC = {"states": ["A"], "parameters": {"k": K}, "equations": {"A": "-k*A"}}
# a bolus at 0, one at 4, an infusion of 3 over [6.5, 7.5]
SCHEDULE = (Dose(0.0, "A", 10.0), Dose(4.0, "A", 5.0), Dose(6.5, "A", 3.0, duration=1.0))


def exact(t: np.ndarray) -> np.ndarray:
    """The solution of dA/dt = -k A + infusion from A(0) = 0 under SCHEDULE; a sample at a
    dose's time is the state before it."""
    v = np.where(t > 0, 10 * np.exp(-K * t), 0.0)
    v = v + np.where(t > 4, 5 * np.exp(-K * (t - 4)), 0.0)
    infused = np.clip(t - 6.5, 0, 1.0)
    return v + 3.0 / K * (1 - np.exp(-K * infused)) * np.exp(-K * np.clip(t - 7.5, 0, None))


TIMES = np.linspace(0, 10, 21)  # holds the dose times 0 and 4: troughs


def test_segments_cut_at_doses_and_carry_jumps_and_rates():
    segs = segments([SCHEDULE, ()], ["A"], 0.0, 10.0)
    assert [(s.start, s.end) for s in segs] == [(0, 4), (4, 6.5), (6.5, 7.5), (7.5, 10)]
    assert segs[0].jump.tolist() == [[10.0], [0.0]]  # the bolus at the first time
    assert segs[1].jump.tolist() == [[5.0], [0.0]]
    assert segs[2].rate.tolist() == [[3.0], [0.0]] and not segs[3].rate.any()
    # a later start: the bolus at 0 is in its initial state, the running infusion is not
    late = segments([SCHEDULE], ["A"], 7.0, 10.0)
    assert [(s.start, s.end) for s in late] == [(7.0, 7.5), (7.5, 10.0)]
    assert late[0].rate.tolist() == [[3.0]] and not late[0].jump.any()
    np.testing.assert_allclose(
        dosed(SCHEDULE, ["A"], np.array([0.0, 4.0, 7.0, 9.0]))[:, 0], [0, 10, 16.5, 18]
    )


def test_simulate_spec_and_the_torch_solve_follow_the_exact_solution():
    spec = ModelSpec.from_dict(SPEC)
    out = simulate_spec(spec, np.zeros((1, 1)), TIMES, doses=[SCHEDULE])[0, :, 0]
    np.testing.assert_allclose(out, exact(TIMES), atol=1e-7)

    class Decay(torch.nn.Module):
        def __init__(self, rate):
            super().__init__()
            self.rate = rate

        def forward(self, t, y):
            return -K * y + (0 if self.rate is None else self.rate)

    t = torch.tensor(TIMES, dtype=torch.float64)
    y0 = torch.zeros(2, 1, dtype=torch.float64)
    out = solve_with_doses(Solver(rtol=1e-9, atol=1e-11), Decay, y0, t, [SCHEDULE, ()], ["A"])
    np.testing.assert_allclose(out[:, 0, 0].numpy(), exact(TIMES), atol=1e-7)
    assert out[:, 1, 0].abs().max() == 0  # the undosed row stays at 0


def dosed_data(tmp_path, noise: float = 0.0, seed: int = 0) -> tuple:
    """Two conditions of the decay model, one dosed by SCHEDULE, one by a single bolus, A
    measured; the spec learns k."""
    spec_path = tmp_path / "m.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {
                "states": ["A"],
                "parameters": {"k": {"value": 0.2, "learn": True, "min": 0}},
                "equations": {"A": "-k*A"},
            }
        )
    )
    schedules = {"a": SCHEDULE, "b": (Dose(1.0, "A", 8.0),)}
    truth = simulate_spec(
        ModelSpec.from_dict(SPEC), np.zeros((2, 1)), TIMES, doses=list(schedules.values())
    )
    rng = np.random.default_rng(seed)
    values = truth[:, :, None, :] + noise * rng.standard_normal(truth[:, :, None, :].shape)
    m = Measurements(TIMES, values, ["A"], ["a", "b"])
    data = write_wide(m, tmp_path / "d.csv")
    doses = tmp_path / "doses.csv"
    rows = [
        f"{c},{d.time},{d.state},{d.amount},{d.duration or ''}"
        for c, s in schedules.items()
        for d in s
    ]
    doses.write_text("condition,time,state,amount,duration\n" + "\n".join(rows) + "\n")
    cond = tmp_path / "c.csv"
    cond.write_text("condition,init_A\na,0\nb,0\n")
    return spec_path, read_measurements(data, spec_path, cond, doses=doses)


def test_the_table_is_read_per_condition(tmp_path):
    _, m = dosed_data(tmp_path)
    assert m.doses == {"a": SCHEDULE, "b": (Dose(1.0, "A", 8.0),)}
    model = build_hybrid(m_spec(tmp_path), m, Solver())
    assert model.doses == [SCHEDULE, (Dose(1.0, "A", 8.0),)]
    assert model.select_conditions([1]).doses == [(Dose(1.0, "A", 8.0),)]


def m_spec(tmp_path):
    return ude.load_spec(tmp_path / "m.yaml")


def test_the_refit_and_training_recover_the_rate_through_the_doses(tmp_path):
    """Without the doses, no single k fits the series (it jumps up twice): the refit's k
    within 2 % of the truth (noise 1 % of the peak) says the doses were honoured."""
    spec_path, m = dosed_data(tmp_path, noise=0.1)
    refit = TwinRefit(max_iter=100).fit(ude.load_spec(spec_path), m)
    assert refit.values["k"] == pytest.approx(K, rel=0.02)
    assert refit.nmse < 1e-3
    result = ude.fit(spec_path, m, max_epochs=40, lr=0.05, polish_epochs=5)
    assert result.model.parameter_values()["k"] == pytest.approx(K, rel=0.02)


def test_warm_start_smooths_between_doses(tmp_path):
    """Each piece between doses is smoothed on its own: the smoothed derivative is -k A
    (a spline across a jump would have a spike of size jump / spacing there)."""
    _, m = dosed_data(tmp_path)
    smoothed = smooth_states(m, ["A"], min_points=4)
    assert smoothed is not None and smoothed.rate is not None
    rel = np.abs(smoothed.dy + K * smoothed.y - smoothed.rate) / np.abs(smoothed.y).max()
    assert np.median(rel) < 0.02 and rel.max() < 0.3
    # a: the first piece's spline taken back to the bolus at 0, minus the bolus (the spline
    # extrapolates half a sample spacing: within 10 % of the dose); b: 3 samples before its
    # first dose are too few to smooth
    assert abs(smoothed.initial[0, 0]) < 1.0 and np.isnan(smoothed.initial[1, 0])
    # a state the data do not measure beside doses: its reconstructed path would cross the
    # boluses, so there is no warm start
    assert smooth_states(m, ["A", "B"], min_points=4) is None


# One bad dosing table per case: (table, what the one-line message must name).
BAD_DOSES = {
    "unknown state": ("condition,time,state,amount\na,1,B,5\n", ["line 2, column 'state'", "'B'"]),
    "negative time": (
        "condition,time,state,amount\na,-1,A,5\n",
        ["line 2, column 'time'", "negative"],
    ),
    "past the horizon": (
        "condition,time,state,amount\na,1,A,5\na,12,A,5\n",
        ["line 3, column 'time'", "after the horizon of condition 'a' (10)"],
    ),
    "condition absent from the data": (
        "condition,time,state,amount\nc,1,A,5\n",
        ["line 2, column 'condition'", "'c' is not in the data"],
    ),
    "negative amount": ("condition,time,state,amount\na,1,A,-5\n", ["line 2, column 'amount'"]),
    "negative duration": (
        "condition,time,state,amount,duration\na,1,A,5,-1\n",
        ["line 2, column 'duration'"],
    ),
    "not a number": ("condition,time,state,amount\na,1,A,lots\n", ["line 2, column 'amount'"]),
    "unknown column": ("condition,time,state,amount,route\na,1,A,5,iv\n", ["column 'route'"]),
    "missing column": ("condition,time,amount\na,1,5\n", ["no 'state' column"]),
}


@pytest.mark.parametrize("case", list(BAD_DOSES))
def test_bad_dosing_table_is_one_clear_error(tmp_path, case):
    text, expected = BAD_DOSES[case]
    dosed_data(tmp_path)
    doses = tmp_path / "bad_doses.csv"
    doses.write_text(text)
    with pytest.raises(ude.UdeError) as err:
        read_measurements(tmp_path / "d.csv", tmp_path / "m.yaml", tmp_path / "c.csv", doses=doses)
    msg = str(err.value)
    assert str(doses) in msg and "\n" not in msg
    for part in expected:
        assert part in msg, (case, msg)
