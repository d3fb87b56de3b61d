"""The benchmark across the eight challenges: python benchmark.py suite=smoke|standard|full

Examples:
    python benchmark.py                                   # the smoke suite (minutes)
    python benchmark.py suite=standard                    # resumes if interrupted
    python benchmark.py -m suite=standard shard=0,1 n_shards=2 hydra/launcher=local
    python benchmark.py suite=standard 'suite.systems=[goodwin]' 'suite.methods=[sindy,ude]'

Results go to ``benchmark_results/<suite>/results-*.jsonl`` (one row per cell; finished cells
are skipped on a rerun), the report to ``report.md``, ``results.csv`` and ``plots/``.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # small solves: threads cost more than they give

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ude.runs import exit_2_on_user_errors, filter_known_warnings, run_cli  # noqa: E402

logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
filter_known_warnings()


@hydra.main(version_base="1.3", config_path="conf/benchmark", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    from ude.benchmark.runner import run

    with exit_2_on_user_errors():
        run(cfg, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)


def cli() -> None:
    """Errors a user can cause print one line and exit with status 2."""
    run_cli(main)


if __name__ == "__main__":
    cli()
