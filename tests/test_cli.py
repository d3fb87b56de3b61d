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
        (["distill.library=[mass_action,hil]"], "distill.library[1]: unknown family 'hil'"),
        (["distill.library={add: ['x*q']}"], "distill.library.add[0]: unknown name 'q'"),
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


def test_a_spec_library_naming_an_unknown_family_exits_2(tmp_path):
    spec = tmp_path / "lib.yaml"
    spec.write_text(
        "states: [x, y]\nequations: {x: -x, y: -y}\nneural: {targets: [y]}\n"
        "library: [mass_action, hil]\n"
    )
    proc = run_train(tmp_path, f"model.spec={spec}")
    assert proc.returncode == 2
    assert f"{spec}: library[1]: unknown family 'hil'" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
