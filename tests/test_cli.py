"""The commands as a user meets them: errors a user can cause are one line with exit status 2,
`--help` answers, and a run prints its own lines only."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ude.errors import UdeError
from ude.spec.model_spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
# A short run of the default example: 3 epochs, the CSV log, no distillation.
SHORT = ["trainer.max_epochs=3", "trainer.check_val_every_n_epoch=1", "distill=none"]


def run(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*args], cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=300
    )


def run_train(tmp_path, *overrides: str, run_dir: str = "run") -> subprocess.CompletedProcess:
    return run(sys.executable, "train.py", f"hydra.run.dir={tmp_path}/{run_dir}", *overrides)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["trainer.max_epoch=5"],
            "trainer.max_epoch: no such key (did you mean trainer.max_epochs?",
        ),
        (["optim.learning_rate=0.1"], "the keys under optim are: fit_cycles, grad_clip, loss, lr,"),
        (["data=csv"], "data.path: no value given (give your measurements table as data.path="),
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


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("states: [x]\nparameters:\n  b: 0.1\nequations\n  x: -b*x\n", 4, "a key without ':'"),
        ("states: [x]\ninputs: [u,\nequations:\n  x: -x\n", 2, "'[' list that is not closed"),
        ("states: [x]\nparameters:\n    b: 0.1\n  c: 2\n", 4, "indentation"),
        ("states: [x]\nname: 'abc\nequations:\n  x: -x\n", 2, "quoted text that is not closed"),
    ],
)
def test_a_yaml_error_names_the_line_of_the_mistake(tmp_path, text, line, expected):
    # PyYAML notices an unfinished key, list or quote on a later line than the mistake's
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    with pytest.raises(UdeError) as err:
        load_spec(spec)
    assert str(err.value).startswith(f"{spec}: line {line}: not valid YAML: ")
    assert expected in str(err.value) and "\n" not in str(err.value)


HELP = [
    ([sys.executable, "train.py"], "usage: python train.py"),
    ([sys.executable, "benchmark.py"], "usage: python benchmark.py"),
    ([sys.executable, "-m", "ude.train"], "usage: python -m ude.train"),
    ([sys.executable, "-m", "ude.benchmark"], "usage: python -m ude.benchmark"),
    ([sys.executable, "-m", "ude.distill"], "usage: python -m ude.distill"),
    ([sys.executable, "-m", "ude.spec"], "usage: python -m ude.spec"),
]


@pytest.mark.parametrize(("command", "usage"), HELP, ids=[" ".join(c[1:]) for c, _ in HELP])
def test_every_command_answers_help(command, usage):
    proc = run(*command, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert usage in proc.stdout, proc.stdout[:2000]
    assert "Traceback" not in proc.stderr


def test_spec_check_reads_a_spec_without_torch():
    code = (
        "import sys; from ude.spec.cli import main; rc = main(['check', 'lotka_volterra']); "
        "print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules)); "
        "sys.exit(rc)"
    )
    proc = run(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dx/dt" in proc.stdout and proc.stdout.strip().endswith("[]"), proc.stdout


HELP_WITHOUT_TORCH = [
    ("ude.distill.cli", "main"),
    ("ude.twin.cli", "simulate_main"),
    ("ude.twin.cli", "personalise_main"),
    ("ude.petab.__main__", "main"),
]


@pytest.mark.parametrize(("module", "main"), HELP_WITHOUT_TORCH, ids=lambda x: x)
def test_a_command_s_help_loads_neither_torch_nor_lightning(module, main):
    """--help answers before torch loads (5-9 s of imports on 2 cores)."""
    code = (
        f"import sys; from {module} import {main}\n"
        f"try:\n    {main}(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))"
    )
    proc = run(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout and proc.stdout.strip().endswith("[]"), proc.stdout[-500:]


@pytest.mark.parametrize(
    "override",
    [
        "model.activation=sigmoid",
        "model.spec=missing.yaml",
        "distill.library=[mass_action,hil]",
        "ckpt_path=missing/last.ckpt",
        "resume=sometimes",
        "distill.distiller.score_refit.optimizer=newton",
    ],
)
def test_a_bad_activation_spec_library_or_checkpoint_answers_before_torch_loads(tmp_path, override):
    """The run's inputs are checked before Lightning's import (5-9 s on 2 cores)."""
    code = (
        "import sys; from ude.train.cli import cli\n"
        f"sys.argv = ['train.py', 'hydra.run.dir={tmp_path}', {override!r}]\n"
        "try:\n    cli()\nexcept SystemExit as stop:\n    code = stop.code\n"
        "print(code, sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))"
    )
    proc = run(sys.executable, "-c", code)
    assert proc.stdout.strip().endswith("2 []"), (proc.stdout[-500:], proc.stderr[-1000:])
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


# What a run prints: the progress line, the summary, the run directory; nothing else.
OWN_LINES = ("epoch ", "ude: ", "run directory: ")


def test_a_run_and_its_resume_print_their_own_lines_only(tmp_path):
    first = run_train(tmp_path, *SHORT)
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    resumed = run_train(tmp_path, *SHORT[1:], "trainer.max_epochs=5", f"ckpt_path={ckpt}")
    for proc in (first, resumed):
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = [x for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
        noise = [x for x in lines if not x.startswith(OWN_LINES)]
        assert not noise, noise  # no GPU/TPU banner, no tips, no deprecation warnings
    # train.log keeps the same lines with their times, for both runs
    log = (run_dir / "train.log").read_text()
    assert log.count("ude: lotka_volterra trained for") == 2 and "[ude.train][INFO]" in log
    # one checkpoint file, and the log of every epoch across the resume
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    with open(run_dir / "logs" / "metrics.csv") as f:
        epochs = sorted({int(float(r["epoch"])) for r in csv.DictReader(f) if r["train/mse"]})
    assert epochs == [0, 1, 2, 3, 4]


def test_the_checkpoint_holds_the_model_after_its_lbfgs_polish(tmp_path):
    """Polish epochs make no step Lightning counts: last.ckpt once kept the model before
    them (saved at the end of epoch 1 of 0-3 here), so a re-distillation or a resume started
    from the unpolished model. It holds the state after all 4 epochs (Lightning's epoch count
    at the end of training is 4)."""
    import torch

    proc = run_train(tmp_path, *SHORT[1:], "trainer.max_epochs=4", "optim.polish_epochs=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == 4


def test_a_failed_resume_keeps_the_run_config(tmp_path):
    assert run_train(tmp_path, *SHORT).returncode == 0
    config = (tmp_path / "run" / "config.yaml").read_bytes()
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    missing = run_train(tmp_path, *SHORT, f"ckpt_path={ckpt}.old")
    other = run_train(tmp_path, *SHORT, "model.hidden=8", f"ckpt_path={ckpt}")
    assert missing.returncode == other.returncode == 2
    assert "checkpoint not found" in missing.stderr
    assert "the checkpoint does not fit this config's model" in other.stderr
    assert (tmp_path / "run" / "config.yaml").read_bytes() == config


def test_wandb_offline_run_is_quiet_and_closed(tmp_path):
    env = {**ENV, "WANDB_MODE": "offline", "WANDB_SILENT": "false"}
    proc = run(
        sys.executable, "train.py", f"hydra.run.dir={tmp_path}/run", *SHORT, "logger=wandb", env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "anonymous" not in proc.stdout + proc.stderr
    assert "wandb sync" in proc.stdout
    debug = (tmp_path / "run" / "wandb" / "debug.log").read_text()
    assert "finishing run" in debug
    assert "Traceback" not in debug and "HandleAbandonedError" not in debug


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
