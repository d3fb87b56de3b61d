"""Logger factories that need a decision at run time."""

from __future__ import annotations

import os
from pathlib import Path


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_logger(
    project: str, save_dir: str, name: str | None = None, tags: list[str] | None = None, **kwargs
):
    """Lightning's WandbLogger, offline unless the user is logged in.

    ``WANDB_MODE`` (online, offline, disabled) wins when set. Offline runs land in
    ``save_dir/wandb`` and can be uploaded later with ``wandb sync``.
    """
    from pytorch_lightning.loggers import WandbLogger

    mode = os.environ.get("WANDB_MODE")
    offline = mode == "offline" or (mode is None and not _logged_in())
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        save_dir=save_dir,
        name=name,
        tags=list(tags or []),
        offline=offline,
        **kwargs,
    )
