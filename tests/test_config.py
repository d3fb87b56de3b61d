"""Every config group composes; the ones this machine can run instantiate."""

import pytest
from hydra.utils import instantiate

from ude.conf import CONF_DIR as CONF
from ude.runs import data_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group", ["data", "model", "solver", "trainer", "logger", "callbacks", "experiment"]
)
def test_every_option_of_every_group_composes(make_cfg, group):
    assert options(group), f"conf/{group} is empty"
    for option in options(group):
        cfg = make_cfg(f"{group}={option}")
        assert cfg[group if group != "experiment" else "model"] is not None


def test_data_model_solver_instantiate(make_cfg):
    cfg = make_cfg()
    datamodule = instantiate(data_config(cfg))
    solver = instantiate(cfg.solver)
    model = instantiate(cfg.model, _partial_=True)(
        measurements=datamodule.measurements, solver=solver
    )
    assert model.spec.states == ["x", "y"]
    assert datamodule.measurements.values.shape == (1, 31, 1, 2)


@pytest.mark.parametrize("solver", options("solver"))
def test_solvers_instantiate(make_cfg, solver):
    assert instantiate(make_cfg(f"solver={solver}").solver).method


@pytest.mark.parametrize("option", options("callbacks"))
def test_callbacks_instantiate(make_cfg, option):
    cfg = make_cfg(f"callbacks={option}")
    assert all(instantiate(c) is not None for c in cfg.callbacks.values())


@pytest.mark.parametrize("option", ["csv", "tensorboard", "none"])
def test_loggers_instantiate(make_cfg, option):
    cfg = make_cfg(f"logger={option}")
    assert all(instantiate(c) is not None for c in cfg.logger.values())


def test_cpu_trainer_instantiates_and_gpu_ddp_name_their_accelerator(make_cfg):
    cfg = make_cfg("trainer=cpu")
    assert instantiate(cfg.trainer).max_epochs == cfg.trainer.max_epochs
    assert make_cfg("trainer=gpu").trainer.accelerator == "gpu"
    assert make_cfg("trainer=ddp").trainer.strategy == "ddp"
    assert make_cfg("trainer=gpu64").trainer.precision == "64-true"


def test_a_stiff_training_solver_is_kept_by_the_distillation_refits(make_cfg):
    import ude.runs  # noqa: F401 - registers the config's resolvers, as train.py does

    default = make_cfg().distill.distiller
    assert (default.score_refit.method, default.refit.method) == ("rk4", "dopri5")
    stiff = make_cfg("solver=rosenbrock23").distill.distiller
    assert (stiff.score_refit.method, stiff.refit.method) == ("rosenbrock23", "rosenbrock23")
