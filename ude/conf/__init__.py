"""The Hydra configs, shipped inside the package so that an installed ``ude`` (``ude-train``,
``ude-benchmark``, ``ude-distill``) has them: ``config.yaml`` and one folder per group for
training, ``benchmark/`` for the benchmark."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent
"""The folder of ``config.yaml`` (``python train.py``'s primary config)."""
