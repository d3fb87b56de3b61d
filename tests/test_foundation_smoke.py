"""A fast_dev_run through train.py: one training step, and the run directory it leaves."""

import json

import matplotlib.image
import numpy as np
from omegaconf import OmegaConf

import train


def test_fast_dev_run_trains_one_step_and_writes_the_run_directory(make_cfg, tmp_path):
    cfg = make_cfg("+trainer.fast_dev_run=1", "logger=none", "callbacks=minimal")
    metrics = train.train(cfg)
    run = tmp_path / "run"
    # the resolved config, as composed: the run can be rebuilt from it
    saved = OmegaConf.load(run / "config.yaml")
    assert OmegaConf.to_container(saved) == OmegaConf.to_container(cfg, resolve=True)
    # one training step ran: its loss was recorded, and the metrics file says what it returned
    assert metrics["stop_reason"] is None and metrics["train_mse_first"] > 0
    assert np.isfinite(metrics["train_nmse"])
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["epochs"] == 1  # Lightning counts the one fast_dev_run epoch as done
    # the fit figure is a non-blank image; a fast_dev_run distils nothing
    image = matplotlib.image.imread(run / "plots" / "fit.png")
    assert image.ndim == 3 and min(image.shape[:2]) > 100 and image.std() > 0
    assert not (run / "twin.json").exists() and "distill" not in metrics
