"""What the command-line entry points share: building a run from its config, and turning errors
a user can cause into one line with exit status 2.

This is the edge where Hydra config trees are read (train.py, benchmark.py, ``python -m
ude.distill``); library code takes plain values.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ude.config_check import config_error
from ude.data.datamodule import ConditionsDataModule
from ude.errors import UdeError
from ude.fit import make_module
from ude.model.hybrid import HybridODE
from ude.model.solver import stiff_or
from ude.progress import Progress
from ude.spec.model_spec import load_spec
from ude.train.module import UDEModule


def invoked_as() -> str:
    """How this process was started, as a user would type it: ``python train.py``,
    ``python -m ude.train`` or ``ude-train`` (for usage lines)."""
    arg0 = Path(sys.argv[0])
    if arg0.name == "__main__.py":
        return f"python -m {arg0.parent.parent.name}.{arg0.parent.name}"
    if arg0.suffix == ".py":
        return f"python {arg0.name}"
    return arg0.name


# ude/conf/config.yaml's help prints ${ude_command:}, the command as the user typed it.
OmegaConf.register_new_resolver("ude_command", invoked_as, replace=True)
# ude/conf/distill's refits use ${ude_stiff_or:${solver.method},rk4}: the training solver when it
# is a stiff one, else the method named.
OmegaConf.register_new_resolver("ude_stiff_or", stiff_or, replace=True)


def build_run(
    cfg: DictConfig, progress: Progress | None = None
) -> tuple[ConditionsDataModule, HybridODE, UDEModule]:
    """The DataModule, HybridODE and UDEModule of a composed (or saved) run config; the
    module reports its warm start and training to ``progress``.

    The spec is loaded first, so a bad spec file is reported before anything else; tensors are
    float64 when the trainer runs in 64-bit precision. The model and the module see the
    training entries only (:meth:`ude.data.Split.masked`): scales, the warm start's smoothing
    and the shooting nodes never read held-out values.
    """
    spec_source = petab_spec_source(cfg)
    spec = load_spec(spec_source)
    double = str(cfg.trainer.get("precision", "32")).startswith("64")
    torch.set_default_dtype(torch.float64 if double else torch.float32)
    try:
        data = data_config(cfg)
        datamodule = (
            instantiate(data, _partial_=True)(spec=spec) if "problem" in data else instantiate(data)
        )
        split = getattr(datamodule, "split", None)
        seen = datamodule.measurements if split is None else split.masked(datamodule.measurements)
        # Objects go in through a partial: Hydra would turn them into config nodes.
        model = instantiate(cfg.model, _partial_=True)(
            spec=spec, measurements=seen, solver=instantiate(cfg.solver)
        )
    finally:
        torch.set_default_dtype(torch.float32)
    return datamodule, model, make_module(model, seen, progress=progress, **cfg.optim)


def data_config(cfg: DictConfig) -> DictConfig:
    """``cfg.data`` for instantiation: resolved, without ``data.seed``, which only feeds the
    synthetic data's draw (``data.measurements.seed: ${data.seed}``) and is no argument of
    the DataModule."""
    if "seed" not in cfg.data:
        return cfg.data
    data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    data.pop("seed")
    return data


def petab_spec_source(cfg: DictConfig) -> str:
    """The spec of a run: ``model.spec``, except that with ``data=petab`` a zoo system name
    (the default) gives way to the PEtab problem itself."""
    source = str(cfg.model.spec)
    problem = cfg.data.get("problem") if "problem" in cfg.data else None
    if problem and not source.lower().endswith((".yaml", ".yml", ".xml", ".sbml")):
        return str(problem)
    return source


def one_line(err: BaseException) -> str:
    """The error's message on one line (a wrapped UdeError's own message when there is one)."""
    cause = err.__cause__ or err.__context__
    text = str(cause) if isinstance(cause, UdeError) else str(err)
    return " ".join(s.strip() for s in text.splitlines() if s.strip())


@contextmanager
def exit_2_on_user_errors() -> Iterator[None]:
    """Errors a user can cause print one line (no traceback) and exit with status 2."""
    try:
        yield
    except (UdeError, HydraException, OmegaConfBaseException) as err:
        print(f"error: {one_line(config_error(err) or err)}", file=sys.stderr)
        sys.exit(2)


def run_cli(main: Callable[[], object]) -> None:
    """Run a ``@hydra.main`` function so that errors reach :func:`exit_2_on_user_errors`
    instead of Hydra's own printer."""
    os.environ["HYDRA_FULL_ERROR"] = "1"
    with exit_2_on_user_errors():
        main()
