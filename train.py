"""Train a hybrid UDE: python train.py [group=option] [key=value ...]

The same command as ``ude-train`` and ``python -m ude.train`` (:mod:`ude.train.cli`), kept at
the top of the source tree. Examples:
    python train.py                                   # Lotka-Volterra, the default example
    python train.py trainer.max_epochs=300 seed=1
    python train.py ckpt_path=outputs/<day>/<time>/checkpoints/last.ckpt   # resume
    python train.py -m seed=0,1,2 hydra/launcher=local                     # a local sweep
    python train.py hydra.run.dir=runs/a                                   # killed? run it again
    python train.py trainer=ddp trainer.devices=2                          # 2 processes (DDP)
"""

from ude._lazy import lazy_getattr
from ude.train.cli import cli, main  # noqa: F401

# `import train; train.train(cfg)` loads the job (torch, Lightning) on first use
__getattr__ = lazy_getattr(__name__, {"train": "ude.train.job"}, globals())

if __name__ == "__main__":
    cli()
