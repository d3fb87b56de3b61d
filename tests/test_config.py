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


class _Submitted(Exception):
    """Raised instead of running sbatch: carries the script submitit wrote."""


def test_slurm_ddp_launcher_writes_the_sbatch_script_of_the_ddp_recipe(tmp_path, monkeypatch):
    """hydra/launcher=slurm_ddp through the real submitit launcher, up to the sbatch call:
    one task per device on each node, the requeue signal, the partition and the time."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict
    from submitit.slurm.slurm import SlurmExecutor

    GlobalHydra.instance().clear()
    overrides = [
        "hydra/launcher=slurm_ddp",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=90",
        "trainer=ddp",
        "trainer.accelerator=gpu",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        f"hydra.sweep.dir={tmp_path}",
    ]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.job.name = "train"

    def written(self, path):
        raise _Submitted(path)

    monkeypatch.setattr(SlurmExecutor, "_make_submission_command", written)
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # "srun found"
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)
    with pytest.raises(_Submitted) as submitted:
        launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0)
    script = open(submitted.value.args[0]).read()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",  # tasks per node = trainer.devices
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --time=90",
        "#SBATCH --signal=USR2@120",  # submitit's requeue signal, 2 minutes before the end
        "#SBATCH --array=0-1%2",  # the sweep's two runs as a job array, both at once
    ):
        assert line in script, (line, script)
    assert "srun" in script  # srun starts the tasks: Lightning reads the ranks from SLURM
