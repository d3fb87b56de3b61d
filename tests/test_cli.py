"""`python train.py` turns errors a user can cause into one line and exit status 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_train(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "train.py", f"hydra.run.dir={tmp_path}/run", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer.max_epoch=5"], "trainer.max_epoch"),
        (["optim.lr=fast"], "optim.lr"),
        (["solver=rk5"], "rk5"),
        (["model.spec=missing.yaml"], "missing.yaml"),
        (["model.activation=sigmoid"], "sigmoid"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, overrides, expected):
    proc = run_train(tmp_path, *overrides)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and expected in lines[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_a_bad_spec_file_names_the_file_and_key(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("states: [x]\nequations:\n  x: -k*x\n")
    proc = run_train(tmp_path, f"model.spec={spec}")
    assert proc.returncode == 2
    assert f"{spec}: equations.x: unknown name 'k'" in proc.stderr
    assert "Traceback" not in proc.stderr


BLOW_UP_SPEC = (
    "states: [x]\nparameters:\n  k: {value: 1.5, learn: true, min: 1.0}\nequations:\n  x: k*x**2\n"
)


@pytest.mark.parametrize(
    "solver",
    [
        "dopri5",
        "rodas5p",
        pytest.param("rk4", marks=pytest.mark.slow),
        pytest.param("adjoint", marks=pytest.mark.slow),
        pytest.param("rosenbrock23", marks=pytest.mark.slow),
    ],
)
def test_a_model_that_blows_up_stops_with_the_time_step_and_advice(tmp_path, solver):
    # x' = k x^2 with k >= 1 from x(0) = 1 leaves every bound by t = 1/k <= 1, and the data
    # run to t = 2: no parameter value the fit may choose makes it solvable.
    spec = tmp_path / "blow.yaml"
    spec.write_text(BLOW_UP_SPEC)
    data = tmp_path / "blow.csv"
    data.write_text("time,x\n" + "".join(f"{t / 10},{1 + t / 10}\n" for t in range(21)))
    proc = run_train(
        tmp_path,
        "data=csv",
        f"data.path={data}",
        f"model.spec={spec}",
        f"solver={solver}",
        "trainer.max_epochs=2",
        "distill=none",
        "logger=none",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and "could not integrate past t=0." in last, last
    assert "step size" in last and "check its rates and initial values" in last
    assert "Traceback" not in proc.stderr
