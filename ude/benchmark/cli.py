"""The benchmark across the eight challenges: ``ude-benchmark`` / ``python benchmark.py`` /
``python -m ude.benchmark`` suite=smoke|standard|full [key=value ...].

Examples:
    ude-benchmark                                         # the smoke suite (minutes)
    ude-benchmark suite=standard                          # resumes if interrupted
    ude-benchmark -m suite=standard shard=0,1 n_shards=2 hydra/launcher=local
    ude-benchmark suite=standard 'suite.systems=[goodwin]' 'suite.methods=[sindy,ude]'

Results go to ``benchmark_results/<suite>/results-*.jsonl`` (one row per cell; finished cells
are skipped on a rerun), the report to ``report.md``, ``results.csv`` and ``plots/``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # small solves: threads cost more than they give

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import ude.conf  # noqa: E402, F401 - registers the resolvers the configs use (${ude_command:})
from ude.errors import exit_2_on_user_errors, run_cli  # noqa: E402
from ude.train.quiet import quiet_lightning  # noqa: E402

# The benchmark's configs: benchmark.yaml, suite/, hydra/launcher/.
CONF = Path(__file__).resolve().parent / "conf"
logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="benchmark")
def main(cfg: DictConfig) -> None:
    from ude.benchmark.runner import run

    with exit_2_on_user_errors(), quiet_lightning():
        run(cfg, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)


def cli() -> None:
    """Errors a user can cause print one line and exit with status 2."""
    run_cli(main)
