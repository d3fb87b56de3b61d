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
_BANNERS = "pytorch_lightning.utilities.rank_zero"
# torch >= 2.9 deprecates LeafSpec, which pytorch_lightning.utilities._pytree still uses.
_PYTREE = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info banners and tips and the ``LeafSpec`` FutureWarning."""
    banners = logging.getLogger(_BANNERS)
    level = banners.level
    banners.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_PYTREE, category=FutureWarning)
            yield
    finally:
        banners.setLevel(level)
