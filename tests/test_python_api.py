"""From Python, ``ude.fit`` trains and ``ude.Distiller`` distils as ``python train.py`` does:
what they are not given comes from ``ude/conf``, the configs the command and the benchmark
read."""

import importlib
import inspect

import pytest
from omegaconf import ListConfig, OmegaConf

from ude import Solver, build_hybrid, simulate_measurements
from ude.distill import Distiller, TrajectorySelector
from ude.distill.cli import make_distiller, packaged_distiller
from ude.distill.distiller import PARTS
from ude.runs import train_config

fit_module = importlib.import_module("ude.fit")  # ude.fit, the name, is the function
SETTINGS = ("tie", "identify", "oracle", "nonnegative", "misfit_ratio", "individual", "population")


def _model(method: str):
    data = simulate_measurements("lotka_volterra", noise=0.05, seed=0)
    return build_hybrid("lotka_volterra", data, Solver(method=method))


def _settings(part) -> list:
    """A part's type and plain settings (a list's, item by item), to compare two builds."""
    if isinstance(part, list | ListConfig):
        return [_settings(p) for p in part]
    plain = (bool, int, float, str, type(None), tuple)
    return [type(part), {k: v for k, v in vars(part).items() if isinstance(v, plain)}]


@pytest.mark.parametrize(
    "method, twin_method", [("dopri5", "dopri5"), ("rk4", "dopri5"), ("rodas5p", "rodas5p")]
)
def test_a_distiller_built_in_python_takes_every_part_it_lacks_from_train_py(method, twin_method):
    cfg = train_config([f"solver={method}", "seed=3"])
    command = make_distiller(cfg.distill)
    python = Distiller(seed=3).complete(_model(method))
    for name in (*PARTS, "bootstrap"):
        assert _settings(getattr(python, name)) == _settings(getattr(command, name)), name
    # fitted with rodas5p; the twin then keeps the training's solver where it is a stiff one,
    # else dopri5
    assert python.refit.method == "rodas5p" and python.refit.twin_method == twin_method
    assert python.score_refit.settle_first and python.refit.restarts == 3
    assert type(python.bootstrap).__name__ == "StructureBootstrap"
    assert python.bootstrap.seed == python.sampler.seed == 3


def test_the_distiller_s_own_settings_default_to_train_py_s():
    python, command = Distiller(), packaged_distiller()
    assert {k: getattr(python, k) for k in SETTINGS} == {k: getattr(command, k) for k in SETTINGS}


def test_parts_given_in_python_are_kept_and_a_bootstrap_of_none_is_skipped():
    selector = TrajectorySelector(max_candidates=2)
    given = Distiller(selector=selector, bootstrap=None)
    complete = given.complete(_model("dopri5"))
    assert complete.selector is selector and complete.bootstrap is None
    assert complete.refit is not None and given.refit is None  # the original is left as it was
    assert complete.complete(_model("dopri5")) is complete  # nothing left to take


def test_a_bootstrap_named_other_than_default_is_refused():
    with pytest.raises(ValueError, match="bootstrap='structure'"):
        Distiller(bootstrap="structure")


def test_fit_trains_with_train_py_s_optimiser_settings_unless_told_otherwise(monkeypatch):
    seen = {}

    def capture(model, measurements, **optim):
        seen.update(optim)
        raise RuntimeError("captured")

    monkeypatch.setattr(fit_module, "make_module", capture)
    data = simulate_measurements("lotka_volterra", noise=0.05, seed=0)
    with pytest.raises(RuntimeError, match="captured"):
        fit_module.fit("lotka_volterra", data, lr=0.001)
    command = OmegaConf.to_container(train_config(["~experiment"]).optim)
    assert seen == {**command, "lr": 0.001}
    assert seen["warm_start_steps"] == 500 and seen["fit_cycles"] == 4  # not the module's 0, 1


def test_fit_s_model_solver_and_epochs_defaults_are_train_py_s():
    cfg = train_config(["~experiment"])
    assert inspect.signature(fit_module.fit).parameters["max_epochs"].default == (
        cfg.trainer.max_epochs
    )
    for node, function in ((cfg.model, build_hybrid), (cfg.solver, Solver.__init__)):
        defaults = inspect.signature(function).parameters
        for key, value in OmegaConf.to_container(node).items():
            if not key.startswith("_") and key != "spec":
                assert defaults[key].default == value, (node._target_, key)


@pytest.mark.slow  # trains and distils the default example, then distils it again: about 1 min
def test_a_distiller_built_in_python_gives_the_twin_python_train_py_gave(make_cfg, tmp_path):
    """The default example trained and distilled by ``python train.py``; the same trained
    model distilled again by ``Distiller()`` in Python: the same twin and the same inclusion
    probabilities (the structure bootstrap's)."""
    import json

    from ude.distill.cli import load_run
    from ude.train import job

    run = tmp_path / "run"
    job.train(make_cfg("logger=none", "callbacks.progress.every=0", run_dir=run))
    _, model, measurements, split = load_run(run, [])
    assert not split.has_held_out  # the default example holds nothing out
    found = Distiller().fit(model, measurements)
    written = json.loads((run / "distill.json").read_text())
    values = {name: p.value for name, p in found.twin.parameters.items()}
    for state, term in found.twin.discovered.items():
        assert f"{term.subs(values).evalf(6)}" == written["discovered"][state], state
    assert found.inclusion == written["inclusion_probability"]
