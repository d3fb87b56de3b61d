"""``python -m tests.train_probe [overrides]``: ``python train.py`` with probes for tests of
multi-process runs, which cannot be patched from pytest (Lightning's DDP starts each further
process by running the same command again, this module included).

Environment:
    UDE_PROBE_LOG: a file where every process appends ``pid <pid> rank <rank>`` when it starts
        and ``warm_start rank <rank>`` each time it runs the warm start.
    UDE_PROBE_NAN: ``<rank>:<epoch>``: the loss of that process becomes NaN from that epoch on.
"""

from __future__ import annotations

import os

import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only

import ude.train.module as module
from ude.train.cli import cli


def _note(line: str) -> None:
    path = os.environ.get("UDE_PROBE_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def _install() -> None:
    _note(f"pid {os.getpid()} rank {rank_zero_only.rank}")
    matching = module.gradient_matching

    def counted(*args, **kwargs):
        _note(f"warm_start rank {rank_zero_only.rank}")
        return matching(*args, **kwargs)

    module.gradient_matching = counted
    nan = os.environ.get("UDE_PROBE_NAN")
    if nan:
        rank, epoch = (int(x) for x in nan.split(":"))
        local_losses = module.UDEModule.local_losses

        def poisoned(self, batch, shooting=False):
            out = local_losses(self, batch, shooting)
            if self.trainer.global_rank == rank and self.current_epoch >= epoch:
                out["fit"] = out["fit"] * torch.nan
            return out

        module.UDEModule.local_losses = poisoned


if __name__ == "__main__":
    _install()
    cli()
