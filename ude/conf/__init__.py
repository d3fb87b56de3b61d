"""The Hydra configs of training, shipped inside the package so that an installed ``ude``
(``ude-train``, ``ude-distill``) has them: ``config.yaml`` and one folder per group. The
benchmark's are in ``ude/benchmark/conf/``."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent
"""The folder of ``config.yaml`` (``python train.py``'s primary config)."""
