"""End to end: benchmark.py on a tiny suite, its resume, and the neural methods' interface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "benchmark.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_tiny_suite_end_to_end_and_resume(tmp_path):
    out = tmp_path / "bench"
    # the tiny suite plus the two neural methods, briefly trained, on one noise level
    args = [
        "suite=tiny",
        f"out_dir={out}",
        "suite.methods=[ude,sindy,weak_sindy,esindy,node]",
        "suite.axes=null",
        'methods.ude.overrides=["trainer.max_epochs=20","optim.warm_start_steps=100"]',
    ]
    first = _run(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    report = (out / "report.md").read_text()
    for method in ("ude", "sindy", "weak_sindy", "esindy", "node"):
        assert f"| {method} |" in report
    assert (out / "plots" / "heatmaps.png").is_file()
    second = _run(*args)
    assert second.returncode == 0
    assert "5 already done" in second.stdout


def test_bad_suite_exits_2(tmp_path):
    bad = _run("suite=tiny", f"out_dir={tmp_path}", "suite.systems=[nowhere]")
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error:") and "nowhere" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
