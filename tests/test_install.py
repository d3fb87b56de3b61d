"""An installed ude, away from the source tree: the wheel carries the configs, and the console
scripts run from any folder (a venv over this Python's packages, so nothing is downloaded)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (
    "ude-train",
    "ude-benchmark",
    "ude-distill",
    "ude-spec",
    "ude-personalise",
    "ude-simulate",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built, without network, from a copy of the sources (no build/ in the repo)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "ude", src / "ude", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--no-index", "-q", "-w", str(out), str(src)], check=True, timeout=300)
    return next(out.glob("ude-*.whl"))


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv (over this Python's site-packages) with the wheel."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(root)],
        check=True,
    )
    python = root / "bin" / "python"
    install = ["install", "--no-deps", "--no-index", "-q", str(wheel)]
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), *install], check=True, timeout=300
    )
    return root / "bin"


def run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """A command of the venv, run in ``cwd`` (outside the source tree)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1", PATH=f"{venv}:{env['PATH']}")
    return subprocess.run([*args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_carries_the_configs_and_the_commands(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = z.read(info).decode()
        meta = z.read(info.replace("entry_points.txt", "METADATA")).decode()
    configs = {
        str(p.relative_to(ROOT))
        for folder in (ROOT / "ude" / "conf", ROOT / "ude" / "benchmark" / "conf")
        for p in folder.rglob("*.yaml")
    }
    assert configs and configs <= names, sorted(configs - names)
    for command in COMMANDS:
        assert f"{command} = ude." in entry_points, entry_points
    assert "Requires-Dist: pysindy<3,>=2.0" in meta


def test_installed_commands_run_outside_the_source_tree(venv, tmp_path):
    where = run(venv, tmp_path, str(venv / "python"), "-c", "import ude; print(ude.__file__)")
    assert where.stdout.startswith(str(venv.parent)), where.stdout + where.stderr
    spec = run(venv, tmp_path, "ude-spec", "check", "lotka_volterra")
    assert spec.returncode == 0 and "dx/dt" in spec.stdout, spec.stderr
    # the training config composes from the installed package
    cfg = run(venv, tmp_path, "ude-train", "--cfg", "job", "distill=none")
    assert cfg.returncode == 0, cfg.stderr[-2000:]
    assert "spec: lotka_volterra" in cfg.stdout and "ResumableCSVLogger" in cfg.stdout
    # every console script's function loads (each one's --help: the slow test below)
    load = (
        "from importlib.metadata import entry_points as e; "
        "print(sorted(p.name for p in e(group='console_scripts') "
        "if p.name.startswith('ude-') and callable(p.load())))"
    )
    loaded = run(venv, tmp_path, str(venv / "python"), "-c", load)
    assert loaded.stdout.strip() == str(sorted(COMMANDS)), loaded.stdout + loaded.stderr


@pytest.mark.slow
def test_installed_train_distill_and_benchmark(venv, tmp_path):
    for command in COMMANDS:
        help_ = run(venv, tmp_path, command, "--help")
        assert help_.returncode == 0 and f"usage: {command}" in help_.stdout, help_.stderr
    # train without distillation, then distil the run: the path that once crashed because
    # conf/distill/default.yaml was not installed
    train = run(
        venv, tmp_path, "ude-train", "trainer.max_epochs=3", "distill=none", "hydra.run.dir=run"
    )
    assert train.returncode == 0, train.stderr[-2000:]
    quick = [
        "distill.distiller.selector.max_candidates=1",
        "distill.distiller.selector.prune=false",
        "distill.distiller.selector.grow=false",
        "distill.distiller.selector.rescreen=false",
        "distill.distiller.bootstrap=null",
        "distill.forecast_interval=null",
        "distill.forecast_horizon=2",
    ]
    distill = run(venv, tmp_path, "ude-distill", "run", *quick, "--name", "first")
    assert distill.returncode == 0, distill.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "distill" / "first" / "twin.json").read_text())
    bench = run(venv, tmp_path, "ude-benchmark", "suite=tiny", "out_dir=bench")
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert (tmp_path / "bench" / "report.md").is_file()
