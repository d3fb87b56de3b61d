"""What the command-line entry points share: building a run from its config, and turning errors
a user can cause into one line with exit status 2.

This is the edge where Hydra config trees are read (train.py, benchmark.py, ``python -m
ude.distill``); library code takes plain values.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import Container, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ude.data.datamodule import ConditionsDataModule
from ude.data.measurements import Measurements
from ude.errors import UdeError
from ude.fit import make_module
from ude.model.hybrid import HybridODE
from ude.model.solver import stiff_or
from ude.spec.library_key import check_terms_reach_a_slot, parse_library
from ude.spec.model_spec import ModelSpec, load_spec
from ude.train.module import UDEModule

# conf/distill's refits use ${ude_stiff_or:${solver.method},rk4}: the training solver when it
# is a stiff one, else the method named.
OmegaConf.register_new_resolver("ude_stiff_or", stiff_or, replace=True)


def build_run(cfg: DictConfig) -> tuple[ConditionsDataModule, HybridODE, UDEModule]:
    """The DataModule, HybridODE and UDEModule of a composed (or saved) run config.

    The spec is loaded first, so a bad spec file is reported before anything else; tensors are
    float64 when the trainer runs in 64-bit precision.
    """
    spec = load_spec(cfg.model.spec)
    check_library_choice(cfg, spec)
    with _precision(cfg):
        datamodule = instantiate(cfg.data)
    model, module = build_model(cfg, spec, datamodule.measurements)
    return datamodule, model, module


@contextmanager
def _precision(cfg: DictConfig) -> Iterator[None]:
    """Tensors are float64 while building when the trainer runs in 64-bit precision."""
    double = str(cfg.trainer.get("precision", "32")).startswith("64")
    torch.set_default_dtype(torch.float64 if double else torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(torch.float32)


def build_model(
    cfg: DictConfig, spec: ModelSpec, measurements: Measurements
) -> tuple[HybridODE, UDEModule]:
    """The HybridODE of ``spec`` on ``measurements`` and its UDEModule, as ``cfg``'s model,
    solver and optimiser settings make them."""
    with _precision(cfg):
        # Objects go in through a partial: Hydra would turn them into config nodes.
        model = instantiate(cfg.model, _partial_=True)(
            spec=spec, measurements=measurements, solver=instantiate(cfg.solver)
        )
    return model, make_module(model, measurements, **cfg.optim)


CONF = Path(__file__).resolve().parents[1] / "conf"


def train_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``python train.py <overrides>`` runs with, composed from ``conf/`` (usable
    inside another Hydra app: its global state is restored). Entries that name Hydra's run
    directory (``${hydra:...}``) cannot be resolved outside a run: set them before use."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF), version_base="1.3"):
            return compose("config", overrides=list(overrides))
    finally:
        restore_gh_from_backup(backup)


def check_library_choice(cfg: DictConfig, spec: ModelSpec) -> None:
    """A bad ``distill.library`` (unknown family, undeclared name in a custom term) is an
    error before training, not after."""
    choice = cfg.get("distill", {}).get("library") if cfg.get("distill") else None
    if choice is None:
        return
    raw = OmegaConf.to_container(choice, resolve=True) if isinstance(choice, Container) else choice
    names = [*spec.states, *spec.inputs]
    parsed = parse_library(raw, names, source="config", where="distill.library")
    slots = [(s.name, s.inputs) for s in spec.neural]
    check_terms_reach_a_slot(parsed, slots, names, source="config", where="distill.library")


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
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)


def run_cli(main: Callable[[], object]) -> None:
    """Run a ``@hydra.main`` function so that errors reach :func:`exit_2_on_user_errors`
    instead of Hydra's own printer."""
    os.environ["HYDRA_FULL_ERROR"] = "1"
    with exit_2_on_user_errors():
        main()
