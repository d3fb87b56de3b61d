"""Every option of every config group composes and instantiates into what it configures.

A group option is a file under conf/; each test below takes every file of its group, so a new
option is tested by being added. What a GPU is needed for is built as far as this machine
allows: the trainer's arguments are bound to pl.Trainer's signature.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

import ude.runs  # noqa: F401 - registers the config's resolvers, as train.py does
from ude.conf import CONF_DIR
from ude.data.datamodule import ConditionsDataModule
from ude.distill import Distiller
from ude.distill.cli import distill_enabled, make_distiller
from ude.model.hybrid import HybridODE
from ude.model.solver import Solver
from ude.runs import build_run

ROOT = Path(__file__).resolve().parents[1]
CONF = CONF_DIR
BENCH_CONF = ROOT / "ude" / "benchmark" / "conf"
BOEHM = ROOT / "tests/data/petab_models/Boehm_JProteomeRes2014/Boehm_JProteomeRes2014.yaml"
# data=csv needs a table: the lynx-hare series shipped in data/
LYNX = ["data.path=data/lynx_hare.csv", "data.time_column=year", "model.spec=data/lynx_hare.yaml"]


def options(group: str, root: Path = CONF) -> list[str]:
    found = sorted(p.stem for p in (root / group).glob("*.yaml"))
    assert found, f"{root / group} is empty"
    return found


def test_every_group_is_tested():
    """A new group under conf/ needs its test here."""
    groups = {
        p.relative_to(CONF).as_posix()
        for p in CONF.rglob("*")
        if p.is_dir() and not p.name.startswith("__")
    }
    tested = {
        "data", "model", "solver", "trainer", "logger", "callbacks", "distill", "experiment",
        "hydra", "hydra/launcher", "hydra/job_logging",
    }  # fmt: skip
    assert groups == tested
    bench = {p.relative_to(BENCH_CONF).as_posix() for p in BENCH_CONF.rglob("*") if p.is_dir()}
    assert bench == {"suite", "logger", "hydra", "hydra/launcher"}


@pytest.mark.parametrize("option", options("data"))
def test_data_options_give_a_datamodule_of_the_spec(make_cfg, option):
    extra = {"csv": LYNX, "petab": [f"data.problem={BOEHM}"]}.get(option, [])
    datamodule, _, _ = build_run(make_cfg(f"data={option}", *extra))
    assert isinstance(datamodule, ConditionsDataModule)
    m = datamodule.measurements
    expected = {
        "synthetic": (["x", "y"], 31),
        "csv": (["hare", "lynx"], 21),
        "petab": (["pSTAT5A_rel", "pSTAT5B_rel", "rSTAT5A_rel"], 16),
    }[option]
    assert (m.observables, len(m.times)) == expected
    assert np.isfinite(m.values).any()


@pytest.mark.parametrize("option", options("model"))
def test_model_options_build_a_hybrid_ode_that_solves(make_cfg, option):
    cfg = make_cfg(f"model={option}")
    datamodule, model, module = build_run(cfg)
    assert isinstance(model, HybridODE) and model.spec.states == ["x", "y"]
    assert len(model.networks) == 1 and model.networks[0].layers[0].out_features == 32
    states = model.simulate(torch.tensor(datamodule.measurements.times), torch.tensor([0]))
    assert states.shape == (1, 31, 2) and torch.isfinite(states).all()


class _Decay(torch.nn.Module):
    """dy/dt = -k y with a parameter k = 1 (the adjoint method needs a module)."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.k * y


@pytest.mark.parametrize("option", options("solver"))
def test_solver_options_integrate_exponential_decay(make_cfg, option):
    solver = instantiate(make_cfg(f"solver={option}").solver)
    assert isinstance(solver, Solver) and solver.method == option.replace("adjoint", "dopri5")
    t = torch.linspace(0, 2, 21, dtype=torch.float64)
    y = solver(_Decay(), torch.ones(1, 1, dtype=torch.float64), t)
    # y = exp(-t): every method's default tolerance (or rk4's step) is well under 1e-3
    torch.testing.assert_close(y[:, 0, 0], torch.exp(-t), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options_construct_a_trainer(make_cfg, option):
    cfg = make_cfg(f"trainer={option}")
    needs_gpu = cfg.trainer.get("accelerator") == "gpu"
    if needs_gpu and not torch.cuda.is_available():
        # everything up to the device: each key is an argument of pl.Trainer
        partial = instantiate(cfg.trainer, _partial_=True)
        assert partial.func is pl.Trainer
        inspect.signature(pl.Trainer).bind(**partial.keywords)
        return
    trainer = instantiate(cfg.trainer)
    assert isinstance(trainer, pl.Trainer) and trainer.max_epochs == cfg.trainer.max_epochs
    if option == "ddp":
        assert type(trainer.strategy).__name__ == "DDPStrategy"


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options_construct_loggers_writing_into_the_run(make_cfg, option, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg(f"logger={option}")
    loggers = [instantiate(c) for c in (cfg.logger or {}).values()]
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    kinds = {"csv": [CSVLogger], "tensorboard": [TensorBoardLogger], "none": []}
    expected = kinds.get(option, [WandbLogger])
    assert len(loggers) == len(expected)
    assert all(isinstance(lg, kind) for lg, kind in zip(loggers, expected, strict=True))
    run_dir = Path(cfg.trainer.default_root_dir)
    assert all(Path(lg.save_dir).is_relative_to(run_dir) for lg in loggers)


@pytest.mark.parametrize("option", options("callbacks"))
def test_callback_options_construct_callbacks(make_cfg, option):
    cfg = make_cfg(f"callbacks={option}")
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    names = sorted(type(c).__name__ for c in callbacks)
    expected = {
        "default": ["Checkpoint", "EarlyStopping", "PrintProgress"],
        "minimal": ["Checkpoint"],
    }[option]
    assert names == expected and all(isinstance(c, pl.Callback) for c in callbacks)


@pytest.mark.parametrize("option", options("distill"))
def test_distill_options_construct_a_distiller_or_none(make_cfg, option):
    cfg = make_cfg(f"distill={option}")
    if option == "none":
        assert not distill_enabled(cfg)  # train.py skips the distillation
        return
    distiller = instantiate(cfg.distill.distiller)
    assert isinstance(distiller, Distiller)
    parts = [distiller.sampler, distiller.selector, distiller.refit, distiller.score_refit]
    assert all(p is not None for p in parts) and len(distiller.paths) == 3
    assert distiller.bootstrap.n_models == cfg.distill.distiller.bootstrap.n_models


@pytest.mark.parametrize("option", options("experiment"))
def test_experiments_build_their_run(make_cfg, option):
    datamodule, model, module = build_run(make_cfg(f"experiment={option}"))
    assert set(model.observable_names) == set(datamodule.measurements.observables)
    assert module.model is model and model.initial.shape[0] == datamodule.measurements.n_conditions
    cfg = make_cfg(f"experiment={option}")
    if cfg.distill:  # its distiller builds each network's library (after training, in a run)
        libraries = make_distiller(cfg.distill).libraries(model)
        assert set(libraries) == set(model.spec.neural_targets)
        assert all(lib.get_feature_names() for lib in libraries.values())


def test_the_refits_fit_with_rodas5p_and_the_twin_keeps_a_stiff_training_solver(make_cfg):
    # every refit fits with the compiled Rodas5P: accurate where rk4 on the data's grid is
    # not, and the fastest (bench/refit_solvers.py); the twin then keeps its own solver,
    # dopri5 or the training's stiff solver
    finals = {"dopri5": "dopri5", "rk4": "dopri5", "rosenbrock23": "rosenbrock23"}
    for solver, final in finals.items():
        distiller = make_cfg(f"solver={solver}").distill.distiller
        refits = (distiller.score_refit.method, distiller.refit.method)
        assert (*refits, distiller.refit.twin_method) == ("rodas5p", "rodas5p", final)


def test_a_run_made_before_rodas5p_refits_resolves_its_recorded_refit_solver():
    from omegaconf import OmegaConf

    import ude.conf  # noqa: F401 - registers the resolvers

    for method, expected in (("dopri5", "rk4"), ("rosenbrock23", "rosenbrock23")):
        old = OmegaConf.create(
            {"solver": {"method": method}, "m": "${ude_stiff_or:${solver.method},rk4}"}
        )
        assert old.m == expected


def _hydra_launcher(config_dir: Path, name: str, option: str, extra: list[str] | None = None):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        cfg = compose(name, [f"hydra/launcher={option}", *(extra or [])], return_hydra_config=True)
    return cfg.hydra.launcher


@pytest.mark.parametrize(
    "where, option",
    [("train", o) for o in options("hydra/launcher")]
    + [("benchmark", o) for o in options("hydra/launcher", BENCH_CONF)],
)
def test_launcher_options_construct_their_launcher(where, option):
    config_dir, name = (CONF, "config") if where == "train" else (BENCH_CONF, "benchmark")
    # slurm_ddp sizes the job from the DDP trainer: tasks per node = trainer.devices
    extra = ["trainer=ddp", "trainer.devices=2"] if option == "slurm_ddp" else []
    launcher = instantiate(_hydra_launcher(config_dir, name, option, extra))
    kind = "JoblibLauncher" if option == "local" else "SlurmLauncher"
    assert type(launcher).__name__ == kind


@pytest.mark.parametrize("option", options("logger", BENCH_CONF))
def test_benchmark_logger_options_construct_their_report(option, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(BENCH_CONF), version_base="1.3"):
        cfg = compose("benchmark", [f"logger={option}", f"out_dir={tmp_path}"])
    reports = [instantiate(c) for c in (cfg.logger or {}).values()]
    assert [type(r).__name__ for r in reports] == {"none": [], "wandb": ["WandbReport"]}[option]


@pytest.mark.parametrize("suite", options("suite", BENCH_CONF))
def test_benchmark_suites_give_cells_methods_and_problems(suite):
    from ude.benchmark.runner import build_methods, suite_cells
    from ude.benchmark.scenario import build_problem

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(BENCH_CONF), version_base="1.3"):
        cfg = compose("benchmark", [f"suite={suite}"])
    cells = suite_cells(cfg)
    assert cells and {c.method for c in cells} == set(cfg.suite.methods)
    methods = build_methods(cfg, list(cfg.suite.methods))
    assert all(callable(m.fit) for m in methods.values())
    for system in cfg.suite.systems:  # each system's first scenario builds its problem
        problem = build_problem(next(c for c in cells if c.scenario.system == system).scenario)
        assert np.isfinite(problem.measurements.values).any()


def test_the_calibration_suite_draws_the_base_scenario_under_ten_noise_seeds():
    """suite=calibration: each system's base scenario alone, once per seed, and each seed its
    own draw of the noise (the standard suite's cells of a system share seed 0's)."""
    from ude.benchmark.runner import suite_cells
    from ude.benchmark.scenario import build_problem

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(BENCH_CONF), version_base="1.3"):
        cfg = compose("benchmark", ["suite=calibration", "suite.methods=[ude]"])
    cells = suite_cells(cfg)
    assert {c.axis for c in cells} == {"base"}
    assert sorted(c.scenario.seed for c in cells if c.scenario.system == "goodwin") == list(
        range(10)
    )
    first, second = (next(c for c in cells if c.scenario.seed == s) for s in (0, 1))
    a, b = (build_problem(c.scenario).measurements.values for c in (first, second))
    assert first.scenario.system == second.scenario.system and not np.allclose(a, b)


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
