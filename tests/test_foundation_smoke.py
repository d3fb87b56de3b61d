import json

import train


def test_fast_dev_run_writes_run_directory(make_cfg, tmp_path):
    cfg = make_cfg("+trainer.fast_dev_run=1", "logger=none", "callbacks=minimal")
    metrics = train.train(cfg)
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file()
    assert json.loads((run / "metrics.json").read_text())["epochs"] >= 0
    assert (run / "plots" / "fit.png").is_file()
    assert metrics["stop_reason"] is None
