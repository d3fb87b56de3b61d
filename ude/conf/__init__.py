"""The Hydra configs of training, shipped inside the package so that an installed ``ude``
(``ude-train``, ``ude-distill``) has them: ``config.yaml`` and one folder per group. The
benchmark's are in ``ude/benchmark/conf/``.

Importing this module registers the resolvers the configs use; it loads neither torch nor
Lightning, so that ``--help`` and a mistyped key answer at once."""

import sys
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parent
"""The folder of ``config.yaml`` (``python train.py``'s primary config)."""

STIFF = frozenset({"rodas5p", "rosenbrock23"})
"""The solver methods for stiff kinetics, ``ude``'s own linearly implicit ones (rodas5p:
:mod:`ude.model.rodas`; rosenbrock23: :mod:`ude.model.stiff`)."""


def invoked_as() -> str:
    """How this process was started, as a user would type it: ``python train.py``,
    ``python -m ude.train`` or ``ude-train`` (for usage lines)."""
    arg0 = Path(sys.argv[0])
    if arg0.name == "__main__.py":
        return f"python -m {arg0.parent.parent.name}.{arg0.parent.name}"
    if arg0.suffix == ".py":
        return f"python {arg0.name}"
    return arg0.name


def stiff_or(method: str, otherwise: str) -> str:
    """``method`` when it is a stiff one, else ``otherwise``: refits of a stiff model keep the
    stiff solver (an explicit one would crawl or blow up), others use the usual choice."""
    return method if method in STIFF else otherwise


def run_dir(ckpt_path: str | None, default: str) -> str:
    """A resumed run writes into the folder of its checkpoint; a new run into ``default``."""
    return str(Path(ckpt_path).resolve().parent.parent) if ckpt_path else default


# config.yaml's help prints ${ude_command:}, the command as the user typed it.
OmegaConf.register_new_resolver("ude_command", invoked_as, replace=True)
# ude/conf/distill's final refit uses ${ude_stiff_or:${solver.method},dopri5}: the training solver
# when it is a stiff one, else the method named (runs made before the selection's refits moved
# to rodas5p name theirs so too, with rk4).
OmegaConf.register_new_resolver("ude_stiff_or", stiff_or, replace=True)
# hydra.run.dir: a resumed run's own folder
OmegaConf.register_new_resolver("ude_run_dir", run_dir, replace=True)
