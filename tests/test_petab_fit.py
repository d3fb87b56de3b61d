"""PEtab: the compiled solve and its adjoint, rodas5p's gradient, training a PEtab SciML
problem (in Python and through train.py), per-condition export and the export command."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sympy as sp
import torch

from ude.data.measurements import Measurements
from ude.model.solver import Solver
from ude.petab import PetabModel, load_problem
from ude.petab import kernels as K
from ude.petab.export import write_petab
from ude.petab.fast import encode_tape
from ude.petab.fit import fit_problem, write_fitted_problem
from ude.spec.compile import CompiledExpressions
from ude.spec.model_spec import ModelSpec, Parameter

ROOT = Path(__file__).resolve().parents[1]
SCIML = ROOT / "tests" / "data" / "petab_sciml_testsuite" / "sciml_problem_import"
BOEHM = ROOT / "tests/data/petab_models/Boehm_JProteomeRes2014/Boehm_JProteomeRes2014.yaml"
ELOWITZ = ROOT / "tests/data/petab_models/Elowitz_Nature2000/Elowitz_Nature2000.yaml"
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
TIGHT = Solver("dopri5", rtol=1e-10, atol=1e-12, max_steps=1_000_000)


def _richardson(fn, x: float, h: float) -> float:
    """Central differences at h and h/2 extrapolated: error O(h^4)."""

    def central(s: float) -> float:
        return (fn(x + s) - fn(x - s)) / (2 * s)

    return (4 * central(h / 2) - central(h)) / 3


def test_tape_kernels_match_torch_autograd() -> None:
    """Every tape operation, forward and reverse, against torch on the same tape."""
    x, y, z = sp.symbols("x y z")
    exprs = [
        x * y + 3 * x - y / z + x**2.5 + y**z + 2**x + sp.sqrt(z) + sp.exp(-x) * sp.log(z),
        sp.tanh(x * z) + sp.sin(y) - sp.cos(x) + sp.Abs(y - 2) + 0.5 * x * z - 1.25,
    ]
    tape = CompiledExpressions(exprs, ["x", "y", "z"])
    code, arg, const, out, out_c = encode_tape(tape)
    values = torch.tensor([0.7, 1.3, 2.2], dtype=torch.float64, requires_grad=True)
    ref = tape(values)
    slots = np.zeros(3 + len(code))
    slots[:3] = values.detach().numpy()
    K.tape_forward(code, arg, const, slots)
    got = np.array([slots[o] if o >= 0 else c for o, c in zip(out, out_c, strict=True)])
    np.testing.assert_allclose(got, ref.detach().numpy(), rtol=1e-14)
    cot = np.array([0.3, -1.1])
    adj = np.zeros_like(slots)
    for o, c in zip(out, cot, strict=True):
        adj[o] += c
    K.tape_reverse(code, arg, const, slots, adj)
    (grad,) = torch.autograd.grad(ref, values, torch.tensor(cot))
    np.testing.assert_allclose(adj[:3], grad.numpy(), rtol=1e-13)


@pytest.mark.parametrize(
    "kind, fn",
    [
        (K.A_TANH, torch.tanh),
        (K.A_RELU, torch.relu),
        (K.A_SIGMOID, torch.sigmoid),
        (K.A_SOFTPLUS, torch.nn.functional.softplus),
        (K.A_SILU, torch.nn.functional.silu),
        (K.A_GELU, torch.nn.functional.gelu),
        (K.A_ELU, torch.nn.functional.elu),
    ],
)
def test_network_kernels_match_torch(kind: int, fn) -> None:
    """A dense layer, the activation and a dense layer: values and gradients as torch's."""
    torch.manual_seed(0)
    w1, b1 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    w2 = torch.randn(2, 4, dtype=torch.float64)
    params = torch.cat([w1.reshape(-1), b1, w2.reshape(-1)]).requires_grad_(True)
    x = torch.tensor([0.4, -1.2, 2.0], dtype=torch.float64, requires_grad=True)
    layers = np.array([[K.DENSE, 3, 4, 0, 12], [kind, 4, 4, -1, -1], [K.DENSE, 4, 2, 16, -1]])
    w1_, b1_, w2_ = params[:12].reshape(4, 3), params[12:16], params[16:].reshape(2, 4)
    ref = w2_ @ fn(w1_ @ x + b1_)
    buf = np.zeros(3 + 4 + 4 + 2)
    buf[:3] = x.detach().numpy()
    at = K.net_forward(layers, 0, 3, params.detach().numpy(), buf)
    np.testing.assert_allclose(buf[at : at + 2], ref.detach().numpy(), rtol=1e-13)
    cot = torch.tensor([0.5, -2.0], dtype=torch.float64)
    g, tmp, gp = np.zeros(4), np.zeros(4), np.zeros(len(params))
    g[:2] = cot.numpy()
    K.net_reverse(layers, 0, 3, params.detach().numpy(), buf, g, tmp, gp)
    gx, gparams = torch.autograd.grad(ref, (x, params), cot)
    np.testing.assert_allclose(g[:3], gx.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gp, gparams.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", ["019", "035"])
def test_compiled_gradient_is_the_derivative_of_the_compiled_likelihood(case: str) -> None:
    """The adjoint of the accepted steps against finite differences of the same solve (019:
    a network with two outputs in the right-hand side; 035: an input given by a formula).
    Measured: 4e-6 at most (finite-difference error); a wrong adjoint is off by O(1)."""
    model = PetabModel(load_problem(SCIML / case / "petab" / "problem.yaml"), solver=TIGHT)
    assert model.compiled is not None
    _, mech, nets = model.gradient()
    checks = [(model.theta, (i,), mech[q]) for i, q in enumerate(model.estimated)]
    for net_id, net in model.networks.items():
        for key, tensor in net.named_parameters():
            _, layer, name = key.split(".", 2)
            checks.append((tensor, (0,) * tensor.dim(), nets[net_id][layer][name].flat[0]))
    for tensor, index, grad in checks:

        def llh(v: float, tensor=tensor, index=index) -> float:
            with torch.no_grad():
                old = float(tensor[index])
                tensor[index] = v
                out = float(model.forward())
                tensor[index] = old
            return out

        x = float(tensor.detach()[index])
        fd = _richardson(llh, x, 1e-4 * max(1.0, abs(x)))
        assert abs(fd - grad) <= 5e-5 * max(abs(fd), 1.0), (index, fd, grad)


def test_rodas5p_gradient_of_a_stiff_published_model() -> None:
    """Boehm (stiff, time in its rates): rodas5p's exact adjoint in numpy against finite
    differences of the same solve, and its likelihood against LSODA's."""
    from ude.petab.objective import ScipySolver

    problem = load_problem(BOEHM)
    model = PetabModel(problem, solver=Solver("rodas5p", rtol=1e-10, atol=1e-12))
    value, mech, _ = model.gradient()
    with torch.no_grad():
        lsoda = float(PetabModel(problem, solver=ScipySolver()).forward())
        assert abs(value - lsoda) < 1e-6
        # stiff=True takes rodas5p at its default tolerance (it took rosenbrock23)
        stiff = PetabModel(problem, stiff=True)
        assert stiff.solver.method == "rodas5p"
        assert abs(float(stiff.forward()) - lsoda) < 1e-3
    for i in (0, 3):

        def llh(v: float, i=i) -> float:
            with torch.no_grad():
                old = float(model.theta[i])
                model.theta[i] = v
                out = float(model.forward())
                model.theta[i] = old
            return out

        fd = _richardson(llh, float(model.theta[i]), 1e-4)
        assert abs(fd - mech[model.estimated[i]]) <= 1e-5 * max(abs(fd), 1.0)


def test_fit_recovers_a_perturbed_network_and_exports_what_it_fitted(tmp_path: Path) -> None:
    """Case 001 with its network's last layer perturbed: Adam then L-BFGS climb back most of
    the way to the nominal likelihood; the written problem has the fitted likelihood."""
    problem = load_problem(SCIML / "001" / "petab" / "problem.yaml")
    nominal = float(PetabModel(problem).forward())
    layer = problem.networks["net1"].net.layers["layer3"]
    with torch.no_grad():
        layer.bias += 0.2
    solver = Solver("dopri5", rtol=1e-8, atol=1e-10, max_steps=100_000)
    model, metrics = fit_problem(problem, solver, epochs=30, lr=1e-3, polish_steps=100)
    assert metrics["compiled_solve"]
    # perturbed: llh ~ -3e4; the nominal values (33) are near the maximum: the fit must get
    # there (measured: 36.9, a little above, fitting the noise)
    assert metrics["first"] < nominal - 1000
    assert metrics["best"] > nominal - 1.0
    again = load_problem(write_fitted_problem(model, tmp_path / "fitted"))
    with torch.no_grad():
        assert abs(float(PetabModel(again, solver=solver).forward()) - metrics["best"]) < 1e-6


def test_export_gives_each_condition_its_own_parameter(tmp_path: Path) -> None:
    spec = ModelSpec(
        states=["x"],
        parameters={"k": Parameter(0.5, learn=True, min=0.0, per_condition=True)},
        equations={"x": -sp.Symbol("k") * sp.Symbol("x")},
        initial={"x": 1.0},
    )
    times = np.array([0.0, 1.0, 2.0])
    values = np.exp(-np.outer([0.3, 0.9], times))[:, :, None, None]
    data = Measurements(times=times, values=values, observables=["x"], conditions=["a", "b"])
    path = write_petab(spec, data, tmp_path, per_condition={"k": [0.3, 0.9]})
    table = pd.read_csv(tmp_path / "parameters.tsv", sep="\t").set_index("parameterId")
    assert table.loc["k_a", "nominalValue"] == 0.3 and table.loc["k_b", "estimate"] == 1
    model = PetabModel(load_problem(path))
    ctx, _ = model.experiment_context()
    np.testing.assert_allclose(ctx[:, model.context.index("k")].detach(), [0.3, 0.9])


def test_train_py_fits_a_sciml_problem_and_export_explains_where_it_is(
    tmp_path: Path, capsys
) -> None:
    """A network that sets a parameter (case 003) trained through train.py; the fitted
    problem it writes has the likelihood it reports."""
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            f"hydra.run.dir={run}",
            "data=petab",
            f"data.problem={SCIML / '003' / 'petab' / 'problem.yaml'}",
            "trainer.max_epochs=5",
            "optim.lr=0.001",
            "optim.polish_epochs=5",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best"] >= metrics["first"]
    with torch.no_grad():
        fitted = PetabModel(load_problem(metrics["petab"]), solver=TIGHT)
        assert abs(float(fitted.forward()) - metrics["best"]) < 1e-3
    from ude.petab.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["export", str(run)])
    assert exit_.value.code == 2 and "its fitted problem is" in capsys.readouterr().err


def test_export_help_exits_0(capsys) -> None:
    from ude.petab.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["export", "--help"])
    assert exit_.value.code == 0 and "--out" in capsys.readouterr().out


def test_fit_prints_each_starts_progress_as_it_goes(tmp_path: Path, capsys) -> None:
    """``python -m ude.petab fit --starts N``: a few lines per start, each naming it (start
    i/N), with its objective at the start, during Adam and the polish, and its result."""
    from ude.petab.__main__ import main

    case = SCIML / "001" / "petab" / "problem.yaml"
    args = ["fit", str(case), "--out", str(tmp_path / "fit"), "--starts", "1", "--epochs", "8"]
    main([*args, "--polish", "5", "--solver", "dopri5"])
    lines = capsys.readouterr().out.splitlines()
    for tag in ("start 1/2 (nominal)", "start 2/2 (random 1)"):
        own = [line for line in lines if line.startswith(tag + ": ")]
        assert own[0].endswith("at the start") and own[0].split()[-5] == "llh"
        steps = [line for line in own if ": Adam step " in line]
        assert [line.split("Adam step ")[1].split(":")[0] for line in steps] == [
            "2/8",
            "4/8",
            "6/8",
            "8/8",
        ]
        assert any("L-BFGS-B polish: best " in line for line in own)
        assert " -> " in own[-1] and own[-1].endswith(" s")
        assert len(own) <= 8  # quiet: a log, not a trace
    assert lines[-1].startswith("best objective ")


def test_fit_progress_reaches_a_pipe_before_the_start_finishes(tmp_path: Path) -> None:
    """Into a pipe or a log file, Python buffers its output: the first start's first line must
    arrive while that start is still running (100,000 Adam steps), not when it ends."""
    case = SCIML / "001" / "petab" / "problem.yaml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ude.petab", "fit", str(case), "--out", str(tmp_path / "fit")]
        + ["--starts", "1", "--epochs", "100000", "--solver", "dopri5"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("start 1/2 (nominal): llh ") and proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=60)


def test_polish_stays_within_the_bounds(monkeypatch) -> None:
    """Case 001 with alpha's upper bound (1.2) below its optimum (1.3, the nominal value):
    from alpha on that bound the polish (L-BFGS-B) climbs a long way without evaluating the
    likelihood past it (an unbounded L-BFGS walks out, and its clamped end point can be worse
    than where it started: the polish was then dropped)."""
    problem = load_problem(SCIML / "001" / "petab" / "problem.yaml")
    problem.parameters["alpha"].upper = 1.2
    seen: list[float] = []
    forward = PetabModel.forward

    def recording(self, *args, **kwargs):
        seen.append(float(self.theta[self.estimated.index("alpha")].detach()))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(PetabModel, "forward", recording)
    solver = Solver("dopri5", rtol=1e-8, atol=1e-10, max_steps=100_000)
    start = torch.tensor([1.2, 1.8, 0.9], dtype=torch.float64)
    lines: list[str] = []
    _, metrics = fit_problem(problem, solver, 0, 0.0, 40, log=lines.append, start=start)
    # measured: -28557 at the start, -9772 after (the old unbounded L-BFGS: alpha up to 1.241)
    assert metrics["best"] > metrics["first"] + 1000
    assert len(seen) > 10 and max(seen) <= 1.2
    assert lines[-1].startswith("L-BFGS-B polish: best ")


def test_a_random_start_that_cannot_be_solved_draws_another(tmp_path: Path, monkeypatch) -> None:
    """A random point where the model blows up at t=0 (Elowitz: 1 of 5 with seed 1) is no
    start: another point is drawn, said in the log, and every start has a result; the other
    starts keep their own points."""
    import ude.petab.fit as fit

    real, points = fit.fit_problem, []

    def failing_once(problem, solver, epochs, lr, polish, seed, log, start=None, **kw):
        points.append(start)
        if start is not None and len(points) == 2:  # the first random point: no solve
            return None, {"first": -math.inf, "best": -math.inf, "stop_reason": "start: test"}
        return real(problem, solver, epochs, lr, polish, seed, log, start, **kw)

    monkeypatch.setattr(fit, "fit_problem", failing_once)
    lines: list[str] = []
    case = SCIML / "001" / "petab" / "problem.yaml"
    solver = Solver("dopri5", rtol=1e-6, atol=1e-8, max_steps=100_000)
    summary = fit.multistart(case, tmp_path, solver, 2, 2, 1e-3, 0, log=lines.append)
    assert [r["start"] for r in summary["starts"]] == ["nominal", "random 1", "random 2"]
    assert all(math.isfinite(r["best"]) for r in summary["starts"])
    assert "start 2/3 (random 1): drawing another point (1/10)" in lines
    assert len(points) == 4 and not torch.equal(points[1], points[2])
    # without the failure, random 2 starts from the same point: the redraw came after it
    kept: list = []

    def recording(problem, solver, epochs, lr, polish, seed, log, start=None, **kw):
        kept.append(start)
        return real(problem, solver, epochs, lr, polish, seed, log, start, **kw)

    monkeypatch.setattr(fit, "fit_problem", recording)
    fit.multistart(case, tmp_path / "again", solver, 2, 2, 1e-3, 0, log=lambda line: None)
    assert len(kept) == 3 and torch.equal(kept[2], points[3])


def _oscillator(tmp_path: Path) -> Path:
    """A PEtab problem with many local optima: x'' = -w^2 x from x = 1, measured (sigma 0.1,
    no noise) at 41 times over [0, 10] with w = 2; w estimated in [0.1, 5]. Its log-likelihood
    is 41 log(1/(0.1 sqrt(2 pi))) = 56.73 at w = 2, -2215 at w = 1 and -2075 at w = 3, with
    local maxima between."""
    x, v, w = sp.symbols("x v w")
    spec = ModelSpec(
        states=["x", "v"],
        parameters={"w": Parameter(1.0, learn=True, min=0.1, max=5.0)},
        equations={"x": v, "v": -(w**2) * x},
    )
    times = np.linspace(0.0, 10.0, 41)
    data = Measurements(
        times=times,
        values=np.cos(2.0 * times)[None, :, None, None],
        observables=["x"],
        conditions=["c"],
        initial={"x": np.array([1.0]), "v": np.array([0.0])},
    )
    return write_petab(spec, data, tmp_path / "oscillator", noise=np.array([0.1]))


def test_multistart_screens_and_finds_the_global_optimum(tmp_path: Path) -> None:
    """Two starts on the oscillator: the best two of a Latin-hypercube screen of 30 points
    start in the global optimum's basin and both reach w = 2; the same two starts without the
    screen (the Latin-hypercube points themselves) end one in a local optimum (-1896). The
    spread of the starts is reported."""
    from ude.petab.fit import multistart

    problem = _oscillator(tmp_path)
    solver = Solver("dopri5", rtol=1e-8, atol=1e-10, max_steps=100_000)
    top = 41 * -np.log(0.1 * np.sqrt(2 * np.pi))
    runs = {}
    for n in (30, 2):
        lines: list[str] = []
        out = tmp_path / f"fit{n}"
        runs[n] = multistart(
            problem, out, solver, 2, 0, 0.0, 50, nominal=False, log=lines.append, screen_points=n
        )
        assert lines[-2].startswith(
            f"starts: {runs[n]['spread']['within_1']} of 2 within 1 of the best; their results: "
        )
        assert json.loads((out / "fit.json").read_text())["spread"] == runs[n]["spread"]
    screened = runs[30]
    assert screened["parameters"]["w"] == pytest.approx(2.0, abs=1e-6)
    assert screened["spread"]["results"] == pytest.approx([top, top], abs=1e-6)
    assert screened["screen"]["points"] == 30 and len(screened["screen"]["kept"]) == 2
    assert runs[2]["screen"] == {}
    assert runs[2]["spread"]["within_1"] == 1 and runs[2]["spread"]["results"][1] < top - 100


def _failing_once(monkeypatch, at: int) -> list[int]:
    """PetabModel.forward raising SolverFailed on its ``at``-th call (counted from 1) only;
    returns the call counter."""
    from ude.model.solver import SolverFailed

    calls = [0]
    forward = PetabModel.forward

    def failing(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            raise SolverFailed("injected")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(PetabModel, "forward", failing)
    return calls


def test_polish_steps_back_from_a_point_that_cannot_be_solved(monkeypatch) -> None:
    """The polish's first trial step cannot be solved: scipy's line search backs off and the
    polish goes on (it ended there, 3 evaluations in, when such a point counted as +inf: on
    Elowitz, 6 of 6 starts near the optimum ended so)."""
    problem = load_problem(SCIML / "001" / "petab" / "problem.yaml")
    solver = Solver("dopri5", rtol=1e-8, atol=1e-10, max_steps=100_000)
    start = torch.tensor([1.2, 1.8, 0.9], dtype=torch.float64)
    calls = _failing_once(monkeypatch, 3)  # 1: the start, 2: x0 of the polish, 3: its first step
    lines: list[str] = []
    _, metrics = fit_problem(problem, solver, 0, 0.0, 40, log=lines.append, start=start)
    assert calls[0] > 10
    assert metrics["best"] > metrics["first"] + 1000  # -28557 at the start


def test_adam_steps_back_from_a_point_that_cannot_be_solved(monkeypatch) -> None:
    """An Adam step that cannot be solved sends the start back to its best point with half
    the step size, and the start goes on (it stopped there, with no polish)."""
    problem = load_problem(SCIML / "001" / "petab" / "problem.yaml")
    solver = Solver("dopri5", rtol=1e-8, atol=1e-10, max_steps=100_000)
    start = torch.tensor([1.2, 1.8, 0.9], dtype=torch.float64)
    _failing_once(monkeypatch, 4)
    _, metrics = fit_problem(problem, solver, 20, 0.05, 10, log=lambda line: None, start=start)
    assert metrics["step_backs"] == 1 and "stop_reason" not in metrics
    assert metrics["epochs"] == 19
    assert metrics["best"] > max(metrics["history"])


def test_least_squares_residuals_are_the_likelihood() -> None:
    """Half the squared residuals (weighted residuals and noise terms) plus the log-likelihood
    is the same at any parameters (Elowitz: log10 observable, estimated sigma), so the
    trust-region fit minimises the negative log-likelihood; the fit improves on its start."""
    from ude.petab.fit import _bounds
    from ude.petab.least_squares import has_residuals, least_squares_fit, residuals

    problem = load_problem(ELOWITZ)
    model = PetabModel(problem, solver=Solver("rodas5p", rtol=1e-8, atol=1e-10))
    assert has_residuals(model)
    offsets = []
    for shift in (0.0, 0.05, -0.1):
        with torch.no_grad():
            model.theta += shift
            offsets.append(0.5 * float((residuals(model) ** 2).sum()) + float(model.forward()))
    assert max(offsets) - min(offsets) < 1e-6 * abs(offsets[0])
    with torch.no_grad():
        first = float(model.forward())
    lines: list[str] = []
    best = least_squares_fit(model, *_bounds(model), 200, lines.append)
    assert best > first + 1.0
    with torch.no_grad():
        assert float(model.forward()) == pytest.approx(best, abs=1e-9)
    assert lines[-1].startswith("least squares: llh ")


def test_multiple_shooting_and_windows_find_the_oscillators_optimum_where_single_shooting_does_not(
    tmp_path: Path,
) -> None:
    """From w = 1 (period 6.3 against 3.1), least squares and L-BFGS-B on the one trajectory
    end in a local optimum (-1644, the likelihood at w = 2 is 56.73). Multiple shooting over
    10 segments (its nodes from the data for x, the simulation for v) reaches w = 2, and so
    does least squares on the first quarter of the time course, then half, three quarters;
    the single-shooting stages after either keep it."""
    problem = _oscillator(tmp_path)
    solver = Solver("dopri5", rtol=1e-8, atol=1e-10, max_steps=100_000)
    top = 41 * -np.log(0.1 * np.sqrt(2 * np.pi))
    start = torch.tensor([1.0], dtype=torch.float64)
    results, fitted = {}, {}
    for name, options in {
        "single": {},
        "shooting": {"shooting": 10, "shooting_evaluations": 1000},
        "windows": {"windows": 4},
    }.items():
        lines: list[str] = []
        model, results[name] = fit_problem(
            load_problem(problem),
            solver,
            0,
            0.0,
            50,
            log=lines.append,
            start=start,
            least_squares=200,
            **options,
        )
        fitted[name] = float(model.theta.detach()[0])
        if name == "windows":
            assert [line.split(":")[0] for line in lines[1:4]] == [
                f"least squares (measurements up to t={t})" for t in ("2.5", "5", "7.5")
            ]
    assert results["single"]["best"] < top - 1000 and "shooting" not in results["single"]
    for name in ("shooting", "windows"):
        assert results[name]["best"] == pytest.approx(top, abs=1e-6)
        assert fitted[name] == pytest.approx(2.0, abs=1e-6)
    assert results["shooting"]["shooting"]["segments"] == 10


def test_multiple_shooting_ends_continuous(tmp_path: Path) -> None:
    """The stages from w = 1 start with gaps of order one (x's nodes from the data, v's from
    the simulation at w = 1) and end with a pieced trajectory that is the one-piece one: gaps
    below 1e-6 (the last weight makes a gap of sigma/300 cost 0.5) and the same observables."""
    from ude.petab.fit import _bounds
    from ude.petab.shooting import ShootingModel, shooting_fit

    solver = Solver("dopri5", rtol=1e-8, atol=1e-10, max_steps=100_000)
    problem = load_problem(_oscillator(tmp_path))
    model = ShootingModel(problem, solver, 10)
    with torch.no_grad():
        model.theta.fill_(1.0)
        model.start_nodes()
        model.simulate()
        first = float(model.gaps().abs().max())
    lines: list[str] = []
    result = shooting_fit(model, *_bounds(model), 1000, log=lines.append)
    assert first > 0.5 and len(lines) == len(result["stages"]) == 7
    assert not model.positive.any()  # x and v change sign: nodes on their own scale
    with torch.no_grad():
        pieced, _, _ = model.observe()
        assert float(model.gaps().abs().max()) < 1e-6
        whole = PetabModel(problem, solver=solver)
        whole.theta.copy_(model.theta)
        one_piece, _, _ = whole.observe()
    assert torch.allclose(pieced, one_piece, atol=1e-5)


def test_multiple_shooting_nodes_start_at_the_data() -> None:
    """Elowitz at its published values: GFP's nodes come from the fluorescence measured at
    their times (fluorescence = background + scale GFP, inverted), so the pieced
    observables there are the measurements; the unobserved states' nodes are the
    simulation's."""
    from ude.petab.shooting import ShootingModel

    solver = Solver("rodas5p", rtol=1e-8, atol=1e-10)
    model = ShootingModel(load_problem(ELOWITZ), solver, 6)
    with torch.no_grad():
        model.start_nodes()
        h, _, _ = model.observe()
        states, _ = PetabModel.simulate(model)
    rows = [int(np.flatnonzero(model._row_time.numpy() == c)[0]) for c in model.cuts[1:-1]]
    assert len(rows) == 5
    assert torch.allclose(h[rows], model.values[rows], rtol=1e-12)
    gfp = model.states.index("GFP")
    others = [j for j in range(len(model.states)) if j != gfp]
    nodes = model.node_states()[0][:, others]
    assert torch.allclose(nodes, states[0, model.cuts[1:-1]][:, others], rtol=1e-9)
    assert not torch.allclose(model.node_states()[0][:, gfp], states[0, model.cuts[1:-1], gfp])


def test_multiple_shooting_jacobian_groups_cover_every_dependence(tmp_path: Path) -> None:
    """Each node moves only the residuals its sparsity row says (its segment's measurements,
    its own gap and the next one), checked by moving each node alone; the groups that share
    a finite-difference evaluation never share a residual."""
    from ude.petab.least_squares import residuals
    from ude.petab.shooting import ShootingModel, _groups, _sparsity

    solver = Solver("dopri5", rtol=1e-10, atol=1e-12, max_steps=100_000)
    model = ShootingModel(load_problem(_oscillator(tmp_path)), solver, 4)

    def evaluate() -> torch.Tensor:
        return torch.cat([residuals(model), model.gaps().flatten()])

    with torch.no_grad():
        model.start_nodes()
        base = evaluate()
        sparsity = _sparsity(model)
        for j in range(model.nodes.numel()):
            model.nodes.view(-1)[j] += 1e-3
            moved = (evaluate() - base).abs() > 1e-12
            model.nodes.view(-1)[j] -= 1e-3
            assert moved.any() and not (moved.numpy() & ~sparsity[:, j]).any()
    groups = _groups(sparsity)
    assert sorted(c for g in groups for c in g) == list(range(sparsity.shape[1]))
    for g in groups:
        assert (sparsity[:, g].sum(axis=1) <= 1).all()
    assert len(groups) < sparsity.shape[1]


@pytest.mark.parametrize(
    "flag, value, says",
    [
        ("--shooting", "-2", "--shooting -2: must be at least 0"),
        # one segment or one window is the whole time course: not silently nothing
        ("--shooting", "1", "--shooting 1: one piece of the time course is none"),
        ("--windows", "1", "--windows 1: one piece of the time course is none"),
    ],
)
def test_fit_rejects_a_bad_shooting_or_windows(tmp_path: Path, capsys, flag, value, says) -> None:
    """A bad --shooting or --windows is one line and exit status 2, before anything is
    fitted."""
    from ude.petab.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["fit", str(ELOWITZ), "--out", str(tmp_path / "f"), flag, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and says in err
    assert not (tmp_path / "f").exists()


def test_shooting_and_windows_say_when_a_problem_has_no_sum_of_squares() -> None:
    """A problem with a network (no sum of squares) fits as before, and says why neither
    multiple shooting nor the windows ran."""
    problem = load_problem(SCIML / "001" / "petab" / "problem.yaml")
    solver = Solver("dopri5", rtol=1e-8, atol=1e-10, max_steps=100_000)
    lines: list[str] = []
    _, metrics = fit_problem(
        problem, solver, 2, 1e-3, 0, log=lines.append, shooting=5, windows=3, least_squares=10
    )
    assert "shooting" not in metrics and metrics["epochs"] == 2
    assert any(line.startswith("no multiple shooting or windows:") for line in lines)
    assert not any("least squares" in line for line in lines)
