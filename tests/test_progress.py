"""Progress: a live line on a terminal only, each stage's duration recorded either way."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from ude.progress import ConsoleProgress, Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def progress_logger(caplog):
    caplog.set_level(logging.INFO, logger="ude.progress")  # as hydra/job_logging=ude sets it


def test_a_terminal_gets_a_line_rewritten_in_place(progress_logger):
    screen = Terminal()
    progress = ConsoleProgress(screen, every=0.0)
    with progress.stage("refits", total=4) as stage:
        for k in range(3):
            stage.advance(note=f"candidate {k}")
    text = screen.getvalue()
    assert "\r\x1b[2K" in text and "\n" not in text  # one line, redrawn
    assert "refits  3/4 [###############-----]" in text and "candidate 2" in text
    assert text.endswith("\r\x1b[2K")  # cleared when the stage ends
    assert set(progress.durations) == {"refits"} and progress.durations["refits"] >= 0


def test_no_line_off_a_terminal_or_when_quiet(progress_logger, caplog):
    pipe = io.StringIO()
    progress = ConsoleProgress(pipe)
    with progress.stage("screen"):
        pass
    assert pipe.getvalue() == "" and "screen" in progress.durations
    caplog.set_level(logging.WARNING, logger="ude.progress")  # hydra/job_logging=quiet
    screen = Terminal()
    with ConsoleProgress(screen).stage("screen"):
        pass
    assert screen.getvalue() == ""


def test_a_log_message_starts_on_a_clean_line(progress_logger):
    screen = Terminal()
    handler = logging.StreamHandler(screen)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        progress = ConsoleProgress(screen, every=0.0)
        stage = progress.start("epochs", total=10)
        stage.advance()
        logging.getLogger("ude.progress").warning("epoch 1/10")
        stage.close()
    finally:
        root.removeHandler(handler)
    text = screen.getvalue()
    assert "\r\x1b[2Kepoch 1/10\n" in text  # the live line was cleared first
    assert all(h.filters == [] for h in root.handlers)  # the filter went with the stage


def test_durations_add_up_and_name_the_metrics():
    progress = Progress()
    for _ in range(2):
        with progress.stage("final refit"):
            pass
    stage = progress.start("warm start", total=3)
    stage.advance(3)
    stage.close()
    stage.close()  # closing twice counts once
    assert set(progress.timings()) == {"final_refit_seconds", "warm_start_seconds"}


@pytest.mark.slow
def test_quiet_job_logging_prints_nothing_and_keeps_the_log(tmp_path):
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "train.py", "hydra/job_logging=quiet", f"hydra.run.dir={tmp_path}/run",
         "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=1", "distill=none"],
        cwd=root, capture_output=True, text=True, timeout=300,
        env={"WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "" and proc.stderr == ""
    log = (tmp_path / "run" / "train.log").read_text()
    assert "epoch 3/3" in log and "ude: lotka_volterra trained for 3 epochs" in log
