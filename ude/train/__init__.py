"""Training: the LightningModule, losses and callbacks."""

from ude._lazy import lazy_getattr

__all__ = ["UDEModule"]
# Lightning loads on first use: ``ude-train --help`` and a mistyped key answer at once.
__getattr__ = lazy_getattr(__name__, {"UDEModule": "ude.train.module"}, globals())
