"""A Hydra callback that writes the report once a multirun's jobs have all finished."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class ReportAfterSweep(Callback):
    """After ``python benchmark.py -m ...``: read every shard's results and write the report."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("report", True):
            return
        from ude.benchmark.runner import report_for

        report_for(config)
