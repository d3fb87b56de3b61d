"""The CSV readers: wide, long, conditions table, and the splits."""

from __future__ import annotations

import numpy as np
import pytest

from ude import UdeError, simulate_measurements
from ude.data import (
    make_split,
    read_conditions,
    read_measurements,
    write_conditions,
    write_long,
    write_wide,
)


def write(path, text: str):
    path.write_text(text)
    return path


def test_wide_one_condition_sorts_times_and_keeps_missing(tmp_path):
    f = write(tmp_path / "d.csv", "time,y,x\n2,4,\n0,1.5,3\n1,,2.5\n")
    m = read_measurements(f, spec="lotka_volterra")
    assert m.conditions == ["default"]
    assert m.observables == ["x", "y"]  # the spec's order
    np.testing.assert_array_equal(m.times, [0, 1, 2])
    assert m.values.shape == (1, 3, 1, 2)
    np.testing.assert_array_equal(m.values[0, :, 0, 0], [3, 2.5, np.nan])
    np.testing.assert_array_equal(m.values[0, :, 0, 1], [1.5, np.nan, 4])
    assert m.sigma is None and m.inputs.shape == (1, 0)


def test_wide_conditions_irregular_times_and_replicates(tmp_path):
    f = write(
        tmp_path / "d.csv",
        "condition,time,x\na,0,1\na,2,2\nb,0,5\nb,1,6\nb,1,6.5\nb,1,NA\na,2,2.2\n",
    )
    m = read_measurements(f)
    assert m.conditions == ["a", "b"]
    np.testing.assert_array_equal(m.times, [0, 1, 2])
    assert m.values.shape == (2, 3, 2, 1)  # two replicates at most
    np.testing.assert_array_equal(m.values[0, :, :, 0], [[1, np.nan], [np.nan] * 2, [2, 2.2]])
    np.testing.assert_array_equal(m.values[1, :, :, 0], [[5, np.nan], [6, 6.5], [np.nan] * 2])


def test_long_with_sigma(tmp_path):
    f = write(
        tmp_path / "d.csv",
        "condition,time,observable,value,sigma\n"
        "c,0,x,1,0.1\nc,0,y,2,\nc,1,x,1.5,0.2\nc,1,x,1.6,0.3\nd,0.5,y,3,0.1\n",
    )
    m = read_measurements(f, spec="lotka_volterra")
    assert m.conditions == ["c", "d"] and m.observables == ["x", "y"]
    np.testing.assert_array_equal(m.times, [0, 0.5, 1])
    assert m.values.shape == (2, 3, 2, 2)
    np.testing.assert_array_equal(m.values[0, 2, :, 0], [1.5, 1.6])
    np.testing.assert_array_equal(m.sigma[0, 2, :, 0], [0.2, 0.3])
    assert np.isnan(m.sigma[0, 0, 0, 1]) and m.values[0, 0, 0, 1] == 2  # sigma unknown: learned


def test_conditions_table_inputs_and_initial_values(tmp_path):
    data = write(tmp_path / "d.csv", "condition,time,R\nlow,0,5\nlow,1,4\nhigh,0,5\nhigh,1,3\n")
    cond = write(tmp_path / "c.csv", "condition,init_D,init_R\nhigh,30,\nlow,1,5\n")
    m = read_measurements(data, spec="dose_response", conditions=cond)
    assert m.conditions == ["low", "high"]
    np.testing.assert_array_equal(m.initial["D"], [1, 30])  # matched by name, not by order
    np.testing.assert_array_equal(m.initial["R"], [5, np.nan])
    table = read_conditions(cond)
    assert table.conditions == ["high", "low"] and table.input_names == []


def test_conditions_table_gives_inputs(tmp_path):
    import yaml

    spec = tmp_path / "m.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "states": ["x"],
                "inputs": ["u"],
                "parameters": {"k": 1.0},
                "equations": {"x": "u - k*x"},
            }
        )
    )
    data = write(tmp_path / "d.csv", "condition,time,x\na,0,0\na,1,1\nb,0,0\nb,1,2\n")
    cond = write(tmp_path / "c.csv", "condition,u\nb,2\na,1\n")
    m = read_measurements(data, spec=spec, conditions=cond)
    assert m.input_names == ["u"]
    np.testing.assert_array_equal(m.inputs[:, 0], [1, 2])
    # one condition without a 'condition' column takes the table's only row and name
    data = write(tmp_path / "d1.csv", "time,x\n0,0\n1,1\n")
    m = read_measurements(
        data, spec=spec, conditions=write(tmp_path / "c1.csv", "condition,u\nwt,3\n")
    )
    assert m.conditions == ["wt"] and m.inputs.tolist() == [[3.0]]


@pytest.mark.parametrize("writer", [write_wide, write_long])
def test_write_then_read_round_trip(tmp_path, writer):
    m = simulate_measurements("dose_response", replicates=2, known_initial=["D"])
    m.values[1, 3:6] = np.nan  # missing samples in one condition
    if writer is write_long:
        m.sigma = np.full_like(m.values, 0.1)
    data = writer(m, tmp_path / "d.csv")
    cond = write_conditions(m, tmp_path / "c.csv")
    back = read_measurements(data, spec="dose_response", conditions=cond)
    assert back.conditions == m.conditions and back.observables == m.observables
    np.testing.assert_allclose(back.times, m.times)
    np.testing.assert_allclose(back.values, m.values)
    np.testing.assert_allclose(back.initial["D"], m.initial["D"])
    assert (back.sigma is None) == (m.sigma is None)


# One bad table per case: (file content, what the message must name). The spec is
# lotka_volterra (states x, y) unless the case gives a conditions table.
BAD = {
    "missing time column": ("condition,t,x\na,0,1\n", ["no 'time' column", "header"]),
    "non-numeric cell": ("time,x,y\n0,1,2\n1,abc,3\n", ["line 3, column 'x'", "'abc'"]),
    "ragged row": ("time,x,y\n0,1,2\n1,3\n", ["line 3", "2 cells", "header has 3"]),
    "empty file": ("", ["empty"]),
    "blank lines only": ("\n\n  \n", ["empty"]),
    "header only": ("time,x,y\n", ["no data rows"]),
    "unknown column": ("time,x,hare\n0,1,2\n", ["column 'hare'", "x, y"]),
    "unknown observable (long)": (
        "time,observable,value\n0,x,1\n0,z,2\n",
        ["line 3, column 'observable'", "'z'", "x, y"],
    ),
    "all-missing series": ("time,x,y\n0,1,\n1,2,\n", ["column 'y'", "no values"]),
    "all-missing condition": (
        "condition,time,x\na,0,1\nb,0,\nb,1,NA\n",
        ["condition 'b' has no values"],
    ),
    "negative time": ("time,x\n0,1\n-1,2\n", ["line 3, column 'time'", "negative time -1"]),
    "empty time": ("time,x\n0,1\n,2\n", ["line 3, column 'time'", "is empty"]),
    "infinite value": ("time,x\n0,inf\n", ["line 2, column 'x'", "finite"]),
    "duplicate column": ("time,x,x\n0,1,2\n", ["column 'x'", "twice"]),
    "semicolon-separated": ("time;x;y\n0;1;2\n", ["line 1", "separated by semicolons"]),
    "tab-separated": ("time\tx\ty\n0\t1\t2\n", ["line 1", "separated by tabs"]),
    "bad sigma": ("time,observable,value,sigma\n0,x,1,0\n", ["line 2, column 'sigma'"]),
    "extra long column": (
        "time,observable,value,dose\n0,x,1,2\n",
        ["column 'dose'", "conditions table"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_table_is_one_clear_error(tmp_path, case):
    text, expected = BAD[case]
    f = write(tmp_path / "bad.csv", text)
    with pytest.raises(UdeError) as err:
        read_measurements(f, spec="lotka_volterra")
    msg = str(err.value)
    assert str(f) in msg and "\n" not in msg
    for part in expected:
        assert part in msg, (case, msg)


def test_missing_file(tmp_path):
    with pytest.raises(UdeError, match="nope.csv: file not found"):
        read_measurements(tmp_path / "nope.csv")


BAD_CONDITIONS = {
    "no condition column": ("name,init_D\na,1\n", ["no 'condition' column"]),
    "unknown column": ("condition,init_D,dose\na,1,2\nb,3,4\n", ["column 'dose'", "init_R"]),
    "not a state": ("condition,init_Q\na,1\nb,2\n", ["column 'init_Q'", "D, R"]),
    "row missing": ("condition,init_D\na,1\n", ["no row for condition 'b'"]),
    "row without data": ("condition,init_D\na,1\nb,2\nc,3\n", ["line 4", "'c' has no data"]),
    "duplicate": ("condition,init_D\na,1\na,2\n", ["line 3", "twice"]),
    "non-numeric": ("condition,init_D\na,1\nb,x\n", ["line 3, column 'init_D'", "'x'"]),
}


@pytest.mark.parametrize("case", list(BAD_CONDITIONS))
def test_bad_conditions_table(tmp_path, case):
    text, expected = BAD_CONDITIONS[case]
    data = write(tmp_path / "d.csv", "condition,time,R\na,0,1\nb,0,2\n")
    cond = write(tmp_path / "c.csv", text)
    with pytest.raises(UdeError) as err:
        read_measurements(data, spec="dose_response", conditions=cond)
    msg = str(err.value)
    assert str(cond) in msg
    for part in expected:
        assert part in msg, (case, msg)


def test_spec_inputs_need_a_conditions_table(tmp_path):
    import yaml

    spec = tmp_path / "m.yaml"
    spec.write_text(yaml.safe_dump({"states": ["x"], "inputs": ["u"], "equations": {"x": "u"}}))
    data = write(tmp_path / "d.csv", "time,x\n0,1\n")
    with pytest.raises(UdeError, match="no conditions table"):
        read_measurements(data, spec=spec)
    cond = write(tmp_path / "c.csv", "condition,u\ndefault,\n")
    with pytest.raises(UdeError, match="line 2, column 'u'.*empty"):
        read_measurements(data, spec=spec, conditions=cond)


def test_splits():
    m = simulate_measurements("dose_response")  # 4 conditions c0..c3, t in [0, 24]
    s = make_split(m, val_conditions=["c2"])
    assert s.train_conditions == [0, 1, 3] and s.held_out_conditions == [2]
    assert not (s.train & s.held_out).any() and (s.train | s.held_out).sum() == m.mask.sum()
    s = make_split(m, val_fraction=0.25)
    assert s.cut == 18.0 and s.held_out[:, m.times > 18].all() and not s.held_out[:, :19].any()
    s = make_split(m, val_conditions=["c0"], val_after=12)
    assert s.held_out[0].all() and s.held_out[1:, m.times > 12].all()
    assert not make_split(m).has_held_out
    for kwargs, message in [
        ({"val_conditions": ["c9"]}, "'c9' is not a condition"),
        ({"val_fraction": 1.5}, "in \\(0, 1\\)"),
        ({"val_after": 30}, "inside the data's span"),
        ({"val_fraction": 0.2, "val_after": 3}, "not both"),
        ({"val_conditions": ["c0", "c1", "c2", "c3"]}, "nothing is left to train"),
    ]:
        with pytest.raises(UdeError, match=message):
            make_split(m, **kwargs)


def test_curriculum_grows_the_fitted_window():
    from ude.data import ConditionsDataModule

    m = simulate_measurements("dose_response")  # t in [0, 24]
    dm = ConditionsDataModule(m, val_after=20, curriculum_epochs=10, curriculum_start=0.25)
    assert dm.window(0) == 5.0 and dm.window(5) == 12.5 and dm.window(10) is None
    batch = next(iter(dm.train_dataloader()))  # no trainer attached: the whole window
    assert (
        batch["mask"][:, m.times > 20].sum() == 0
        and batch["mask"].all(dim=(2, 3))[:, m.times <= 20].all()
    )
    dm.trainer = type("T", (), {"current_epoch": 0, "world_size": 1, "global_rank": 0})()
    batch = next(iter(dm.train_dataloader()))
    assert not batch["mask"][:, m.times > 5].any() and batch["mask"][:, m.times <= 5].all()
    with pytest.raises(UdeError, match="curriculum_epochs"):
        ConditionsDataModule(m, curriculum_epochs=-1)
