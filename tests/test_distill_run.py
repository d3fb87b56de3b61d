"""Distillation inside a train.py run and again from a finished run directory."""

from __future__ import annotations

import json

import pytest

import train
from ude.distill import load_twin
from ude.distill.cli import main as distill_main
from ude.errors import UdeError

QUICK = [
    "trainer.max_epochs=3",
    "trainer.check_val_every_n_epoch=1",
    "callbacks=minimal",
    "logger=none",
    "distill.distiller.selector.max_candidates=2",
    "distill.distiller.selector.prune=false",
    "distill.distiller.bootstrap.n_models=5",
    "distill.distiller.sampler.n_times=50",
]


def test_train_distils_and_run_can_be_distilled_again(make_cfg, tmp_path):
    run = tmp_path / "run"
    metrics = train.train(make_cfg(*QUICK))
    for name in ("twin.json", "equations.md", "distill.json"):
        assert (run / name).is_file(), name
    for name in ("distilled_terms.png", "forecast.png"):
        assert (run / "plots" / name).is_file(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["distill"]["discovered"] == metrics["distill"]["discovered"]
    twin = load_twin(run / "twin.json")
    assert set(twin.discovered) == {"x", "y"}
    assert "$$" in (run / "equations.md").read_text()

    # again from the run directory, with other settings
    again = distill_main(
        [
            str(run),
            "distill.distiller.selector.criterion=aicc",
            "distill.distiller.selector.max_candidates=1",
            "distill.distiller.selector.prune=false",
            "distill.distiller.bootstrap=null",
        ]
    )
    assert len(again["path"]) == 1 and "inclusion_probability" not in again
    assert json.loads((run / "metrics.json").read_text())["distill"]["path"] == again["path"]


def test_distill_none_turns_it_off(make_cfg, tmp_path):
    metrics = train.train(make_cfg("distill=none", *QUICK[:4]))
    assert "distill" not in metrics
    assert not (tmp_path / "run" / "twin.json").exists()


def test_distill_cli_errors_name_the_file(tmp_path):
    with pytest.raises(UdeError, match="config.yaml: not found"):
        distill_main([str(tmp_path)])
    with pytest.raises(UdeError, match="usage"):
        distill_main([])
