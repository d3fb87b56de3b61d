"""PEtab import into training, export, and the errors a user's problem can cause."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import sympy as sp
import torch

from ude.data.datamodule import ConditionDataset
from ude.fit import make_module
from ude.model.hybrid import build_hybrid
from ude.model.solver import Solver
from ude.petab import PetabModel, load_problem
from ude.petab.export import write_petab
from ude.petab.objective import ScipySolver
from ude.petab.training import petab_measurements, petab_spec

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "tests" / "data" / "petab_models"
SCIML = ROOT / "tests" / "data" / "petab_sciml_testsuite" / "sciml_problem_import"
BOEHM = MODELS / "Boehm_JProteomeRes2014" / "Boehm_JProteomeRes2014.yaml"
ELOWITZ = MODELS / "Elowitz_Nature2000" / "Elowitz_Nature2000.yaml"
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def _llh(problem) -> float:
    with torch.no_grad():
        return float(PetabModel(problem, solver=ScipySolver()).forward())


def _mixed_noise(tmp_path: Path) -> Path:
    """Elowitz with the noise parameter of its later rows a number instead of ``sigma``:
    one observable, two sets of placeholder values."""
    root = _copy(tmp_path, MODELS / "Elowitz_Nature2000")
    table = root / "measurementData_Elowitz_Nature2000.tsv"
    lines = table.read_text().splitlines()
    half = len(lines) // 2
    lines[half:] = [line.rsplit("\t", 1)[0] + "\t0.08" for line in lines[half:]]
    table.write_text("\n".join(lines) + "\n")
    return root / "Elowitz_Nature2000.yaml"


def test_training_loss_is_the_petab_likelihood(tmp_path: Path) -> None:
    """What train.py minimises on an imported problem, at the nominal parameters, is the
    problem's negative log-likelihood per measurement (noise formula, log10 transformation,
    learned initial values from the parameters; an observable whose rows have different
    noise parameters split in two)."""
    torch.set_default_dtype(torch.float64)
    try:
        for path in (BOEHM, _mixed_noise(tmp_path)):
            problem = load_problem(path)
            spec = petab_spec(problem)
            if path != BOEHM:
                assert set(spec.observables) == {"fluorescence_1", "fluorescence_2"}
            data = petab_measurements(problem, spec)
            solver = Solver("rodas5p", rtol=1e-8, atol=1e-10, max_steps=200_000)
            module = make_module(build_hybrid(spec, data, solver), data)
            items = ConditionDataset(data)
            batch = {k: torch.stack([items[i][k] for i in range(len(items))]) for k in items[0]}
            with torch.no_grad():
                fit = float(module.losses(batch)["fit"])
            n = int(batch["mask"].sum())
            assert n == len(problem.measurements.value)
            # rodas5p at rtol 1e-8 against LSODA at 1e-10: ~1e-6 apart on these models
            assert abs(-fit * n - _llh(problem)) < 1e-3
    finally:
        torch.set_default_dtype(torch.float32)


def _lint(path: Path) -> bool:
    """petab's linter on a problem: True where it finds errors. petab 0.3 needs pandas' old
    object strings (``future.infer_string``, deprecated in pandas 3, gone in 4: skipped there)."""
    import warnings

    import pandas as pd
    import petab

    if int(pd.__version__.split(".")[0]) >= 4:
        pytest.skip("petab 0.3's linter needs pandas < 4")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        option = (
            pd.option_context("future.infer_string", False)
            if int(pd.__version__.split(".")[0]) == 3
            else contextlib.nullcontext()
        )
        with option:
            return bool(petab.lint_problem(petab.Problem.from_yaml(path)))


@pytest.mark.parametrize("path", [BOEHM, ELOWITZ])
def test_export_round_trip_keeps_the_likelihood(tmp_path: Path, path: Path) -> None:
    """Import, export, import: the same likelihood, and the same estimation problem: every
    estimated parameter estimated again with its scale, bounds and value. Elowitz estimates
    its eight initial values (``init_`` parameters on log10 within [1e-5, 1e3]); ude learns
    them as initial values, and the export makes them estimable again (the conditions table's
    column of each species names its ``init_`` parameter), not fixed numbers."""
    problem = load_problem(path)
    spec = petab_spec(problem)
    data = petab_measurements(problem, spec)
    again = load_problem(write_petab(spec, data, tmp_path))
    assert len(again.measurements.value) == len(problem.measurements.value)
    assert abs(_llh(again) - _llh(problem)) < 1e-6
    assert set(again.estimated) == set(problem.estimated)
    for q in problem.estimated:
        old, new = problem.parameters[q], again.parameters[q]
        assert (new.scale, new.lower, new.upper) == (old.scale, old.lower, old.upper)
        assert new.nominal == pytest.approx(old.nominal, rel=1e-12)
    assert petab_measurements(again).initial_scale == data.initial_scale
    assert len(data.initial_scale) == (8 if path == ELOWITZ else 0)
    assert not _lint(tmp_path / "problem.yaml")


def test_export_gives_conditions_named_freely_petab_ids(tmp_path: Path) -> None:
    """A CSV's conditions may be named anything ('patient 1', '2', 'patient-1'): the export
    makes each a unique PEtab id (the names kept as conditionName), per-condition parameters
    and measurements follow, the problem lints clean and reads back with the same likelihood
    as the same data under plain names."""
    from ude.data.measurements import Measurements
    from ude.petab.export import write_petab
    from ude.spec.model_spec import ModelSpec, Parameter

    x, k = sp.symbols("x k")
    spec = ModelSpec(
        states=["x"],
        parameters={"k": Parameter(0.5, learn=True, min=0.0, max=5.0)},
        equations={"x": -k * x},
    )
    times = np.linspace(0.0, 2.0, 5)
    values = np.stack([np.exp(-0.4 * times), 2 * np.exp(-0.6 * times), np.exp(-times)])
    odd = ["patient 1", "2", "patient-1"]

    def written(names: list[str], out: Path):
        data = Measurements(
            times=times,
            values=values[:, :, None, None],
            observables=["x"],
            conditions=names,
            initial={"x": np.array([1.0, 2.0, 1.0])},
        )
        per = {"k": [0.4, 0.6, 1.0]}
        return load_problem(write_petab(spec, data, out, per_condition=per))

    problem = written(odd, tmp_path / "odd")
    conditions = pd.read_csv(tmp_path / "odd" / "conditions.tsv", sep="\t", dtype=str)
    assert list(conditions["conditionId"]) == ["patient_1", "_2", "patient_1_"]
    assert list(conditions["conditionName"]) == odd
    assert list(conditions["k"]) == ["k_patient_1", "k__2", "k_patient_1_"]
    assert not _lint(tmp_path / "odd" / "problem.yaml")
    plain = written(["a", "b", "c"], tmp_path / "plain")
    assert _llh(problem) == pytest.approx(_llh(plain), rel=1e-12)


def test_export_makes_each_learned_initial_value_a_parameter(tmp_path: Path) -> None:
    """A trained model's learned initial values (a latent state in two conditions, an observed
    one whose first value the data do not give) become estimated parameters at their fitted
    values, one per condition; a value the data give stays a number. Without learned initial
    values (``learn_initial=False``), none."""
    from ude.data.measurements import Measurements
    from ude.model.initial_scale import set_initial
    from ude.petab.export import write_run_petab
    from ude.spec.model_spec import ModelSpec, Parameter

    x, z, k = sp.symbols("x z k")
    spec = ModelSpec(
        states=["x", "z"],
        parameters={"k": Parameter(0.5, learn=True, min=0.0, max=5.0)},
        equations={"x": -k * x + z, "z": -z},
    )
    times = np.linspace(0.0, 2.0, 5)
    values = np.stack([1.0 + times, 2.0 + times])[:, :, None, None]
    data = Measurements(
        times=times,
        values=values,
        observables=["x"],
        conditions=["a", "b"],
        initial={"x": np.array([1.0, np.nan])},
    )
    model = build_hybrid(spec, data, Solver("dopri5"))
    fitted = np.array([[1.0, 0.3], [2.5, 0.7]])
    set_initial(model, torch.tensor(fitted, dtype=model.initial.dtype))
    problem = load_problem(write_run_petab(model, data, tmp_path, tmp_path / "out"))
    assert set(problem.estimated) == {"k", "init_x", "init_z_a", "init_z_b"}
    for q, value in (("init_x", 2.5), ("init_z_a", 0.3), ("init_z_b", 0.7)):
        assert problem.parameters[q].nominal == pytest.approx(value, rel=1e-6)
        assert problem.parameters[q].scale == "lin"
    conditions = pd.read_csv(tmp_path / "out" / "conditions.tsv", sep="\t", dtype=str)
    assert conditions.to_dict("list") == {
        "conditionId": ["a", "b"],
        "x": ["1.0", "init_x"],
        "z": ["init_z_a", "init_z_b"],
    }
    # the observable 'x' measures the species 'x': its PEtab id may not shadow it
    assert list(problem.observables) == ["x_obs"]
    assert not _lint(tmp_path / "out" / "problem.yaml")
    fixed = build_hybrid(spec, data, Solver("dopri5"), learn_initial=False)
    problem = load_problem(write_run_petab(fixed, data, tmp_path, tmp_path / "fixed"))
    assert set(problem.estimated) == {"k"}


def test_train_cli_on_a_petab_problem_writes_its_twin_as_petab(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            f"hydra.run.dir={tmp_path}/run",
            "data=petab",
            f"data.problem={BOEHM}",
            "solver=rodas5p",
            "trainer.max_epochs=2",
            "distill=none",
            "logger=none",
            "optim.warm_start_steps=0",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = load_problem(tmp_path / "run" / "petab" / "problem.yaml")
    assert np.isfinite(_llh(exported))
    assert set(exported.estimated) >= {"k_phos", "sd_pSTAT5A_rel"}
    # the same run exported again by the command, elsewhere: the same problem
    from ude.petab.__main__ import main

    main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "again")])
    assert abs(_llh(load_problem(tmp_path / "again" / "problem.yaml")) - _llh(exported)) < 1e-9


def _check(path: Path, capsys) -> tuple[int, str, str]:
    """``python -m ude.petab check path`` in this process: (exit status, stdout, stderr)."""
    from ude.petab.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["check", str(path)])
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def _copy(tmp_path: Path, source: Path) -> Path:
    dest = tmp_path / "problem"
    shutil.copytree(source, dest)
    for p in dest.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    return dest


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _malformed_hdf5(root: Path) -> None:
    with h5py.File(root / "petab" / "net1_ps.hdf5", "a") as f:
        del f["parameters/net1/layer1/weight"]
        f["parameters/net1/layer1/weight"] = np.zeros((3, 7))


CASES = {
    "missing file": (
        lambda r: (
            r / "Boehm_JProteomeRes2014" / "observables_Boehm_JProteomeRes2014.tsv"
        ).unlink(),
        "observables_Boehm_JProteomeRes2014.tsv: observable file not found",
    ),
    "unknown id": (
        lambda r: _edit(
            r / "Boehm_JProteomeRes2014" / "observables_Boehm_JProteomeRes2014.tsv",
            "(100 * pApB",
            "(100 * pApX",
        ),
        "unknown name 'pApX'",
    ),
    "bad parameterScale": (
        lambda r: _edit(
            r / "Boehm_JProteomeRes2014" / "parameters_Boehm_JProteomeRes2014.tsv",
            "log10",
            "ln",
        ),
        "column parameterScale: unknown parameterScale 'ln'",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_problem_errors_are_one_line_and_exit_2(tmp_path: Path, case: str, capsys) -> None:
    root = _copy(tmp_path, MODELS)
    CASES[case][0](root)
    code, out, err = _check(root / "Boehm_JProteomeRes2014" / "Boehm_JProteomeRes2014.yaml", capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert CASES[case][1] in lines[0]
    assert "llh" not in out


def test_malformed_hdf5_array_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    root = _copy(tmp_path, SCIML / "001")
    _malformed_hdf5(root)
    code, _, err = _check(root / "petab" / "problem.yaml", capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "parameters/net1/layer1/weight: malformed array" in lines[0]


def test_train_refuses_a_bad_problem_before_training(tmp_path: Path) -> None:
    root = _copy(tmp_path, MODELS)
    CASES["bad parameterScale"][0](root)
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            f"hydra.run.dir={run}",
            "data=petab",
            f"data.problem={root / 'Boehm_JProteomeRes2014' / 'Boehm_JProteomeRes2014.yaml'}",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "unknown parameterScale 'ln'" in proc.stderr.splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert not (run / "metrics.json").exists() and not (run / "checkpoints").exists()


def test_check_help_exits_0(capsys) -> None:
    from ude.petab.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["check", "--help"])
    assert exit_.value.code == 0 and "--simulations" in capsys.readouterr().out


def test_check_prints_llh_and_writes_simulations(tmp_path: Path, capsys) -> None:
    from ude.petab.__main__ import main

    case = SCIML / "033" / "petab" / "problem.yaml"  # priors: log_posterior too
    main(
        [
            "check",
            str(case),
            "--simulations",
            str(tmp_path / "s.tsv"),
            "--gradient",
            str(tmp_path / "g.tsv"),
        ]
    )
    out = capsys.readouterr().out.split()
    assert out[0] == "llh" and abs(float(out[1]) - 33.306381502948284) < 1e-3
    assert out[2] == "log_posterior" and abs(float(out[3]) + 32.93800974538344) < 1e-3
    import pandas as pd

    sims = pd.read_csv(tmp_path / "s.tsv", sep="\t")
    ref = pd.read_csv(SCIML / "033" / "simulations.tsv", sep="\t")
    np.testing.assert_allclose(sims["simulation"], ref["simulation"], atol=1e-3)
    grad = pd.read_csv(tmp_path / "g.tsv", sep="\t").set_index("parameterId")["value"]
    assert abs(grad["alpha"] - 1328.829) < 0.1 and "net1.layer1.weight[0,0]" in grad.index


def test_a_neural_reaction_is_scaled_by_the_published_model() -> None:
    """The repressilator's TetR starts at 31 but oscillates between 0.001 and 0.03 at the
    published parameters: a network replacing its repression of the reporter sees TetR (and
    makes GFP) on the scale of the published model's simulation, the 0.9 quantile of each
    state, not that of an initial value; the reporter's mRNA, gone within a second, keeps the
    default. A problem without neural reactions is not simulated for it."""
    from ude.petab.training import petab_datamodule

    example = ROOT / "examples" / "repressilator" / "repressilator.yaml"
    measurements = petab_datamodule(ELOWITZ, spec=str(example)).measurements
    scales = measurements.state_scale
    assert 1e-3 < scales["X_protein"] < 0.1 and 0.1 < scales["GFP"] < 10
    assert "GFP_mRNA" not in scales and "time" not in scales
    spec = petab_spec(ELOWITZ, neural=["v16_v_15"])
    model = build_hybrid(spec, measurements, Solver("rodas5p"))
    for s in ("X_protein", "GFP"):
        assert float(model.state_scale[spec.states.index(s)]) == pytest.approx(scales[s])
    assert petab_datamodule(ELOWITZ).measurements.state_scale == {}


def test_reading_a_problem_warns_nothing_and_keeps_every_digit(tmp_path: Path) -> None:
    """petab 0.3's readers pass ``float_precision``, which pandas 3.1 deprecates (a warning
    per table, hundreds in a test run); ude reads the files itself. Numbers still parse to the
    nearest double: 17 significant digits, and the leading zeros pandas' old "high"
    converter misread (pandas issue 39514)."""
    import csv
    import warnings

    root = _copy(tmp_path, MODELS / "Elowitz_Nature2000")
    table = root / "parameters_Elowitz_Nature2000.tsv"
    _edit(table, "1.04454130394407E-05", "0.0000104454130394407")
    _edit(table, "0.030159280362287", "0.030159280362287013")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning, pandas' Pandas4Warning included, fails
        problem = load_problem(root / "Elowitz_Nature2000.yaml")
        load_problem(SCIML / "009" / "petab" / "problem.yaml")  # v2 tables, two networks
        write_petab(petab_spec(problem), petab_measurements(problem), tmp_path / "out")
    with table.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 21
    for row in rows:
        assert problem.parameters[row["parameterId"]].nominal == float(row["nominalValue"])


def _one_step(spec, data, lr: float = 0.01) -> tuple[float, float, float]:
    """The training loss, one Adam step at ``lr``, the loss again: (loss, loss after, cI(0)
    after); the second loss is nan where the solve fails."""
    from ude.model.solver import SolverFailed

    torch.manual_seed(0)
    model = build_hybrid(spec, data, Solver("rodas5p"))
    module = make_module(model, data)
    items = ConditionDataset(data)
    batch = {k: torch.stack([items[i][k] for i in range(len(items))]) for k in items[0]}
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss = module.losses(batch)["fit"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    y0 = float(model.initial[0, spec.states.index("Y_protein")].detach())
    try:
        with torch.no_grad():
            after = float(module.losses(batch)["fit"])
    except SolverFailed:
        after = float("nan")
    return float(loss.detach()), after, y0


def test_a_learned_initial_value_is_learned_on_its_parameters_scale() -> None:
    """Elowitz estimates its initial values as init_* parameters on log10 within [1e-5, 1e3];
    cI (Y_protein) starts at 8e-4. Learned on the linear scale, the repressilator example's
    first Adam step (lr 0.01) takes it below zero, where Y^n is undefined, and the next solve
    fails at t=0; on the parameter's scale it moves by a few percent and the loss is finite.
    The init_* parameters themselves then feed nothing and are not learned parameters."""
    from dataclasses import replace

    from ude.petab.training import petab_datamodule
    from ude.spec.model_spec import load_spec

    torch.set_default_dtype(torch.float64)
    try:
        plain = petab_spec(ELOWITZ)
        assert not [n for n in plain.parameters if n.startswith("init_")]
        assert len(plain.parameters) == 21 - 8  # the table's 21 less the 8 init_
        spec = load_spec(str(ROOT / "examples" / "repressilator" / "repressilator.yaml"))
        data = petab_datamodule(ELOWITZ, spec=spec).measurements
        assert data.initial_scale["Y_protein"] == ("log10", 1e-5, 1000.0)
        assert set(data.initial_scale) == set(spec.states)
        model = build_hybrid(spec, data, Solver("rodas5p"))
        start = [spec.initial[s] for s in spec.states]
        # as a learned parameter's: a start within 1e-6 of a bound's logit moves inside (Y_mRNA
        # at 999.99995 of 1000: 18.4 decades between the bounds, 2e-5 relative)
        np.testing.assert_allclose(model.initial.detach()[0], start, rtol=2e-5)
        _, linear_after, linear_y0 = _one_step(spec, replace(data, initial_scale={}))
        assert linear_y0 < 0 and np.isnan(linear_after)
        loss, after, y0 = _one_step(spec, data)
        assert np.isfinite(after) and after < loss
        assert 0 < y0 and abs(np.log(y0 / spec.initial["Y_protein"])) < 0.1
    finally:
        torch.set_default_dtype(torch.float32)


def test_scaled_initial_values_keep_known_ones_and_follow_their_conditions() -> None:
    """A state learned on log10 within [1e-3, 1e4] in one condition and known (2000: exp of it
    overflows, the gradient must not turn NaN) in another: the known value stays exact, the
    learned one stays inside its bounds under a large step, setting and selecting conditions
    keep both."""
    from ude.data.measurements import Measurements
    from ude.model.initial_scale import set_initial
    from ude.spec.model_spec import ModelSpec, Parameter

    spec = ModelSpec(
        states=["x", "y"],
        parameters={"k": Parameter(0.5)},
        equations={"x": -sp.Symbol("k") * sp.Symbol("x"), "y": sp.Symbol("x")},
    )
    times = np.linspace(0.0, 2.0, 5)
    values = np.stack([1.0 + times, 2.0 + times])[:, :, None, None]
    data = Measurements(
        times=times,
        values=values,
        observables=["y"],
        conditions=["known", "learned"],
        initial={"x": np.array([2000.0, np.nan])},
        initial_scale={"x": ("log10", 1e-3, 1e4)},
    )
    model = build_hybrid(spec, data, Solver("dopri5"), latent_initial=0.01)
    assert model.initial[0, 0].item() == 2000.0
    assert model.initial[1, 0].item() == pytest.approx(0.01, rel=1e-6)
    loss = model.simulate(torch.tensor(times, dtype=torch.float32), torch.tensor([0, 1])).sum()
    loss.backward()
    raw = model.parametrizations.initial.original
    assert torch.isfinite(raw.grad).all()
    with torch.no_grad():
        raw[1, 0] -= 1e3  # far past the lower bound on the raw scale
    assert model.initial[1, 0].item() == pytest.approx(1e-3, rel=1e-4)  # float32 exp
    assert model.initial[0, 0].item() == 2000.0
    set_initial(model, torch.tensor([[2000.0, 1.0], [-5.0, 2.0]]))  # below zero: the bound
    assert model.initial[1, 0].item() == pytest.approx(1e-3, rel=1e-4)
    set_initial(model, torch.tensor([[2000.0, 1.0], [3.0, 2.0]]))
    one = model.select_conditions([1])
    assert one.initial.shape == (1, 2)
    assert one.initial[0, 0].item() == pytest.approx(3.0, rel=1e-5)
    assert one.initial[0, 1].item() == 2.0
    assert model.initial[1, 0].item() == pytest.approx(3.0, rel=1e-5)  # the original unchanged
    # a twin's refit starts from the initial values it is given, through their scale
    from ude.distill.refit import TwinRefit

    start = np.array([[2000.0, 1.0], [3.0, 2.0]])
    refit = TwinRefit(max_iter=0, learn_noise=False).fit(spec, data, initial=start)
    np.testing.assert_allclose(refit.model.initial.detach(), start, rtol=1e-9)
