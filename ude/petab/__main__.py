"""python -m ude.petab check problem.yaml [--simulations out.tsv] [--gradient out.tsv]
python -m ude.petab export <run> [--out DIR]
python -m ude.petab fit problem.yaml --out DIR [--starts N ...]

Reads a PEtab (v1, v2, SciML) problem and evaluates it at its nominal parameters: prints
``llh <value>`` (and ``log_posterior <value>`` when the parameter table has priors), writes the
simulated observables in the measurement table's order and the gradient when asked.
"""

from __future__ import annotations

import argparse
import sys

from ude.errors import exit_2_on_user_errors

AUTO_STEPS = 20_000  # dopri5 steps per experiment before auto switches to rodas5p

LEAST_SQUARES = 2000
"""Solves of each start's least-squares stage (the default of ``fit``)."""

SHOOTING_EVALUATIONS = 8000
"""Evaluations of the multiple-shooting stages per start in ``python -m ude.petab fit``
(each solves every segment once; a Jacobian takes one per parameter and one per group of
nodes that do not interact)."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ude.petab", description="PEtab and PEtab SciML problems in ude."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check",
        help="evaluate a problem at its nominal parameters",
        description="Prints 'llh <value>' (and 'log_posterior <value>' with priors) at the "
        "nominal parameters of a PEtab problem.",
    )
    check.add_argument("problem", help="the problem's YAML file")
    check.add_argument("--simulations", help="write the simulated observables (TSV)")
    check.add_argument(
        "--gradient",
        help="write the gradient of the log-likelihood (log-posterior with priors) with "
        "respect to the estimated parameters on their parameterScale (TSV)",
    )
    check.add_argument(
        "--solver",
        default="auto",
        choices=["auto", "lsoda", "dopri5", "rodas5p", "rosenbrock23"],
        help="auto: scipy's LSODA for the value alone; for a gradient (or networks) dopri5 "
        "(compiled, with its exact adjoint), and rodas5p where dopri5 needs over "
        f"{AUTO_STEPS} steps (stiff kinetics)",
    )
    check.add_argument("--rtol", type=float, default=1e-10)
    check.add_argument("--atol", type=float, default=1e-12)
    export = sub.add_parser(
        "export",
        help="write a finished train.py run's twin as a PEtab problem",
        description="Writes a finished run's twin (the distilled one when the run has "
        "twin.json, else the trained model if it has no networks) as a PEtab v1 problem: "
        "SBML, the training data as measurements, observables with their noise, parameters "
        "at their fitted values (per-condition ones as one parameter per condition).",
    )
    export.add_argument("run", help="the run directory (with config.yaml and checkpoints/)")
    export.add_argument("--out", help="where to write the problem (default: <run>/petab)")
    fit = sub.add_parser(
        "fit",
        help="fit a problem's estimated parameters (and networks) from several starts",
        description="Maximises the log-likelihood (log-posterior with priors) from the nominal "
        "values and from Latin-hypercube points within the bounds on each parameter's scale "
        "(or the best of a screen): least squares, Adam, then L-BFGS-B; prints each start's "
        "result and how the "
        "starts spread, and writes the best fit as a PEtab problem (nominal values = the fit) "
        "with fit.json beside it.",
    )
    fit.add_argument("problem", help="the problem's YAML file")
    fit.add_argument("--out", required=True, help="folder for the fitted problem and fit.json")
    fit.add_argument("--starts", type=int, default=5, help="random starts besides the nominal")
    fit.add_argument(
        "--screen",
        type=int,
        default=0,
        help="Latin-hypercube points evaluated once, of which the best STARTS are fitted "
        "(default 0: no screen, STARTS Latin-hypercube points are the starts)",
    )
    fit.add_argument(
        "--least-squares",
        type=int,
        default=LEAST_SQUARES,
        help="solves of the trust-region least-squares stage per start, before Adam (problems "
        "with normal noise and no networks or priors; 0: none)",
    )
    fit.add_argument(
        "--shooting",
        type=int,
        default=0,
        metavar="K",
        help="multiple shooting over K segments of the time course before the other stages "
        "(the states where each later segment starts fitted beside the parameters, from the "
        "data where an observable measures one state, the segments joined stage by stage; "
        "problems with normal noise and no networks or priors; default 0: none)",
    )
    fit.add_argument(
        "--shooting-evaluations",
        type=int,
        default=SHOOTING_EVALUATIONS,
        help="evaluations of the multiple-shooting stages per start (each solves every "
        "segment once)",
    )
    fit.add_argument(
        "--windows",
        type=int,
        default=0,
        metavar="N",
        help="a curriculum over the time course: least squares on the first 1/N of it, "
        "then 2/N, ..., before the whole (default 0: the whole from the start)",
    )
    fit.add_argument("--epochs", type=int, default=100, help="Adam steps per start")
    fit.add_argument("--lr", type=float, default=0.05, help="Adam's learning rate")
    fit.add_argument("--polish", type=int, default=1000, help="L-BFGS-B iterations per start")
    fit.add_argument("--solver", default="rodas5p", choices=["rodas5p", "dopri5"])
    fit.add_argument("--rtol", type=float, default=1e-7)
    fit.add_argument("--atol", type=float, default=1e-9)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--no-nominal", action="store_true", help="random starts only")
    args = parser.parse_args(argv)
    with exit_2_on_user_errors():
        {"check": run_check, "export": run_export, "fit": run_fit}[args.command](args)


def run_fit(args: argparse.Namespace) -> None:
    import functools

    from ude.errors import UdeError
    from ude.model.solver import Solver
    from ude.petab.fit import multistart

    for flag, value, least in (
        ("--shooting", args.shooting, 0),
        ("--shooting-evaluations", args.shooting_evaluations, 1),
        ("--windows", args.windows, 0),
    ):
        if value < least:
            raise UdeError(
                f"{flag} {value}: must be at least {least}",
                source="python -m ude.petab fit",
                fix=f"give {flag} a whole number from {least} up",
            )
    for flag, value in (("--shooting", args.shooting), ("--windows", args.windows)):
        if value == 1:  # one segment, one window: the whole time course, as 0 says
            raise UdeError(
                f"{flag} 1: one piece of the time course is none",
                source="python -m ude.petab fit",
                fix=f"give {flag} 0 (none) or 2 or more",
            )
    solver = Solver(args.solver, rtol=args.rtol, atol=args.atol, max_steps=100_000)
    multistart(
        args.problem,
        args.out,
        solver,
        starts=args.starts,
        epochs=args.epochs,
        lr=args.lr,
        polish_steps=args.polish,
        seed=args.seed,
        nominal=not args.no_nominal,
        screen_points=args.screen,
        least_squares=args.least_squares,
        shooting=args.shooting,
        shooting_evaluations=args.shooting_evaluations,
        windows=args.windows,
        log=functools.partial(print, flush=True),  # a line as it happens, into a log file too
    )


def run_export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from ude.distill.cli import load_run
    from ude.errors import UdeError
    from ude.petab.export import write_run_petab

    run = Path(args.run)
    if not (run / "checkpoints" / "last.ckpt").is_file() and (run / "petab").is_dir():
        raise UdeError(
            "this run trained a PEtab SciML problem as it stands: its fitted problem is "
            f"{run / 'petab'}",
            source=str(run),
        )
    _, model, measurements, _ = load_run(run, [])
    path = write_run_petab(model, measurements, run, args.out)
    if path is None:
        raise UdeError(
            "the run's model has networks and no distilled twin (twin.json)",
            source=str(run),
            fix=f"distil it first: python -m ude.distill {run}",
        )
    print(f"wrote {path}")


def run_check(args: argparse.Namespace) -> None:
    import torch

    from ude.model.solver import SolverFailed
    from ude.petab.export import write_gradient, write_simulations
    from ude.petab.problem import load_problem

    problem = load_problem(args.problem)
    method = args.solver
    if method == "auto" and not (args.gradient or problem.networks):
        method = "lsoda"
    posterior = problem.has_priors

    def evaluate(model):
        if args.gradient:
            return model.gradient(posterior=posterior)
        with torch.no_grad():
            model.forward()
        return None, None, None

    if method == "auto":
        try:
            model = _model(problem, "dopri5", args, AUTO_STEPS)
            _, mech, nets = evaluate(model)
        except SolverFailed:
            model = _model(problem, "rodas5p", args)
            _, mech, nets = evaluate(model)
    else:
        model = _model(problem, method, args)
        _, mech, nets = evaluate(model)
    with torch.no_grad():
        h, _, ll = model.observe()
        llh = float(ll.sum())
        print(f"llh {llh:.10g}")
        if posterior:
            print(f"log_posterior {llh + float(model.log_prior()):.10g}")
    if args.simulations:
        write_simulations(problem, h.numpy(), args.simulations)
    if args.gradient:
        write_gradient(mech, nets, args.gradient)


def _model(problem, method: str, args: argparse.Namespace, max_steps: int = 1_000_000):
    from ude.model.solver import Solver
    from ude.petab.objective import PetabModel, ScipySolver

    if method == "lsoda":
        solver = ScipySolver(rtol=args.rtol, atol=args.atol)
    else:
        solver = Solver(method, rtol=args.rtol, atol=args.atol, max_steps=max_steps)
    return PetabModel(problem, solver=solver)


if __name__ == "__main__":
    main(sys.argv[1:])
