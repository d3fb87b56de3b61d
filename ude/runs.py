"""What the command-line entry points share: building a run from its config, and turning errors
a user can cause into one line with exit status 2.

This is the edge where Hydra config trees are read (train.py, benchmark.py, ``python -m
ude.distill``); library code takes plain values.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ude.data.datamodule import ConditionsDataModule
from ude.data.measurements import Measurements
from ude.fit import make_module
from ude.model.hybrid import HybridODE
from ude.progress import Progress
from ude.run_inputs import check_library_choice, petab_spec_source
from ude.spec.model_spec import ModelSpec, load_spec
from ude.train.module import UDEModule


def build_run(
    cfg: DictConfig, progress: Progress | None = None
) -> tuple[ConditionsDataModule, HybridODE, UDEModule]:
    """The DataModule, HybridODE and UDEModule of a composed (or saved) run config; the
    module reports its warm start and training to ``progress``.

    The spec is loaded first, so a bad spec file (or ``distill.library``) is reported before
    anything else; tensors are float64 when the trainer runs in 64-bit precision. The model and
    the module see the training entries only (:meth:`ude.data.Split.masked`): scales, the warm
    start's smoothing and the shooting nodes never read held-out values.
    """
    spec = load_spec(petab_spec_source(cfg))
    check_library_choice(cfg, spec)
    data = data_config(cfg)
    with _precision(cfg):
        datamodule = (
            instantiate(data, _partial_=True)(spec=spec) if "problem" in data else instantiate(data)
        )
    split = getattr(datamodule, "split", None)
    seen = datamodule.measurements if split is None else split.masked(datamodule.measurements)
    model, module = build_model(cfg, spec, seen, progress)
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
    cfg: DictConfig,
    spec: ModelSpec,
    measurements: Measurements,
    progress: Progress | None = None,
) -> tuple[HybridODE, UDEModule]:
    """The HybridODE of ``spec`` on ``measurements`` (the entries it may see) and its
    UDEModule, as ``cfg``'s model, solver and optimiser settings make them; the module reports
    its warm start and training to ``progress``."""
    with _precision(cfg):
        # Objects go in through a partial: Hydra would turn them into config nodes.
        model = instantiate(cfg.model, _partial_=True)(
            spec=spec, measurements=measurements, solver=instantiate(cfg.solver)
        )
    return model, make_module(model, measurements, progress=progress, **cfg.optim)


def train_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``python train.py <overrides>`` runs with, composed from ``ude/conf`` (usable
    inside another Hydra app: its global state is restored). Entries that name Hydra's run
    directory (``${hydra:...}``) cannot be resolved outside a run: set them before use."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    from ude.conf import CONF_DIR

    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=list(overrides))
    finally:
        restore_gh_from_backup(backup)


def data_config(cfg: DictConfig) -> DictConfig:
    """``cfg.data`` for instantiation: resolved, without ``data.seed``, which only feeds the
    synthetic data's draw (``data.measurements.seed: ${data.seed}``) and is no argument of
    the DataModule."""
    if "seed" not in cfg.data:
        return cfg.data
    data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    data.pop("seed")
    return data
