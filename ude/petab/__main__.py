"""python -m ude.petab check problem.yaml [--simulations out.tsv] [--gradient out.tsv]

Reads a PEtab (v1, v2, SciML) problem and evaluates it at its nominal parameters: prints
``llh <value>`` (and ``log_posterior <value>`` when the parameter table has priors), writes the
simulated observables in the measurement table's order and the gradient when asked.
"""

from __future__ import annotations

import argparse
import sys

from ude.runs import exit_2_on_user_errors


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
        choices=["auto", "lsoda", "dopri5", "rosenbrock23"],
        help="auto: scipy's LSODA for the value, dopri5 when a gradient is asked",
    )
    check.add_argument("--rtol", type=float, default=1e-10)
    check.add_argument("--atol", type=float, default=1e-12)
    args = parser.parse_args(argv)
    with exit_2_on_user_errors():
        run_check(args)


def run_check(args: argparse.Namespace) -> None:
    import torch

    from ude.model.solver import Solver
    from ude.petab.export import write_gradient, write_simulations
    from ude.petab.objective import PetabModel, ScipySolver
    from ude.petab.problem import load_problem

    problem = load_problem(args.problem)
    method = args.solver
    if method == "auto":
        method = "dopri5" if args.gradient or problem.networks else "lsoda"
    if method == "lsoda":
        solver = ScipySolver(rtol=args.rtol, atol=args.atol)
    else:
        solver = Solver(method, rtol=args.rtol, atol=args.atol, max_steps=1_000_000)
    model = PetabModel(problem, solver=solver)
    posterior = problem.has_priors
    if args.gradient:
        value, mech, nets = model.gradient(posterior=posterior)
        llh = float(model.forward().detach()) if posterior else value
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


if __name__ == "__main__":
    main(sys.argv[1:])
