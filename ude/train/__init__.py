"""Training: the LightningModule, losses and callbacks."""

from ude.train.module import UDEModule

__all__ = ["UDEModule"]
