"""Quiet Lightning: its start-up banners (``GPU available: ...``), its tips and torch's
``LeafSpec`` deprecation warning (raised inside Lightning) say nothing about a run.

Used as a context manager around building and running a Trainer; the logger level and the
warning filters are restored on exit, and warnings of any other kind still show.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# Lightning's rank_zero_info (banners, tips) logs here; its warnings go through `warnings`.
# DDP adds "Initializing distributed: GLOBAL_RANK ..." from every process and a banner of its
# own (the run prints one line about its processes instead).
_BANNERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning_fabric.utilities.distributed",
)
# torch >= 2.9 deprecates LeafSpec, which pytorch_lightning.utilities._pytree still uses.
_PYTREE = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info banners and tips and the ``LeafSpec`` FutureWarning."""
    banners = [logging.getLogger(name) for name in _BANNERS]
    levels = [b.level for b in banners]
    for b in banners:
        b.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_PYTREE, category=FutureWarning)
            yield
    finally:
        for b, level in zip(banners, levels, strict=True):
            b.setLevel(level)
