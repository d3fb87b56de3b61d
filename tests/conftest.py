"""Shared fixtures: composed Hydra configs that write into a temporary run directory, and the
enzyme's binding refitted with and without an unbinding term."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from ude.conf import CONF_DIR

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)  # tiny models: one thread is fastest, and CI has two cores
CONF = str(CONF_DIR)


def compose_config(run_dir: Path, overrides: list[str] | None = None) -> DictConfig:
    """The composed config (with ``hydra``) whose outputs go to ``run_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("config", overrides=overrides or [], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.name = "test"
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a real run, the task sees the config without it
    return cfg


# A short, cheap run of the default example for tests.
FAST = [
    "trainer.max_epochs=3",
    "trainer.check_val_every_n_epoch=1",
    "callbacks.progress.every=0",
    "logger=none",
    "distill=none",
]


@pytest.fixture
def float64():
    """torch's default dtype float64 inside the test (as training sets it), restored after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def make_cfg(tmp_path):
    def make(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        return compose_config(run_dir or tmp_path / "run", list(overrides))

    return make


@pytest.fixture(scope="session")
def enzyme_refits():
    """The enzyme's binding flux refitted through the ODE on its benchmark base cell's data
    (S and P measured; E and C latent, their initial values known) as ``-kf E S`` and as
    ``-kf E S + kr C``: ``problem`` and ``fits[name] = (refit, Fisher information report,
    owner)``; library terms ``C`` (0) and ``E*S`` (1)."""
    from types import SimpleNamespace

    import numpy as np
    import sympy as sp

    from ude.benchmark.scenario import Scenario, build_problem
    from ude.distill import TwinRefit
    from ude.distill.identifiability import identifiability
    from ude.distill.library import Term
    from ude.twin.symbolic import twin_spec

    problem = build_problem(Scenario("enzyme", seed=0))
    data, known = problem.measurements, problem.known
    terms = {"binding": [Term(sp.Symbol("C")), Term(sp.Symbol("E") * sp.Symbol("S"))]}
    fits = {}
    for name, coef in (("E*S", [0.0, 0.5]), ("C + E*S", [0.5, 1.0])):
        spec, owner = twin_spec(known, terms, {"binding": np.array(coef)})
        refit = TwinRefit(max_iter=300, criterion_tol=0.1, method="rodas5p").fit(spec, data)
        assert refit.ok, name
        fits[name] = (refit, identifiability(refit.model, data, owner), owner)
    return SimpleNamespace(problem=problem, fits=fits)
