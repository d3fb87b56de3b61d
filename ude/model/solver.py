"""The ODE solver wrapper over torchdiffeq: method, tolerances, adjoint, step limits."""

from __future__ import annotations

from typing import Any

import torch
from torchdiffeq import odeint, odeint_adjoint

from ude.errors import UdeError
from ude.model import rodas_autograd
from ude.model.stiff import StiffSolverFailed, rosenbrock23

ADAPTIVE = {"dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"}
FIXED = {"euler", "midpoint", "heun3", "rk4", "explicit_adams", "implicit_adams"}
# ude's own linearly implicit solvers: rodas5p (ude/model/rodas.py), rosenbrock23
# (ude/model/stiff.py)
STIFF = {"rodas5p", "rosenbrock23"}


def stiff_or(method: str, otherwise: str) -> str:
    """``method`` when it is a stiff one, else ``otherwise``: refits of a stiff model keep the
    stiff solver (an explicit one would crawl or blow up), others use the usual choice."""
    return method if method in STIFF else otherwise


class SolverFailed(RuntimeError):
    """The solver gave up (step-size underflow or too many steps): the dynamics blew up."""


class Solver:
    """Solves ``dy/dt = func(t, y)`` for a batch of initial states.

    Args:
        method: a torchdiffeq method name (adaptive: dopri5, bosh3, ...; fixed: rk4, euler, ...)
            or ``rosenbrock23``, an L-stable linearly implicit method for stiff kinetics (fast
            and slow rates, Michaelis-Menten terms with a small K) where dopri5 crawls.
        rtol, atol: tolerances of adaptive methods.
        step_size: step of fixed-step methods, in time units (None: the output grid's spacing).
        adjoint: backpropagate by the adjoint method (memory O(1) in the number of steps).
        max_steps: adaptive steps allowed per solve before giving up.
    """

    def __init__(
        self,
        method: str = "dopri5",
        rtol: float = 1e-6,
        atol: float = 1e-8,
        step_size: float | None = None,
        adjoint: bool = False,
        max_steps: int = 5_000,
    ):
        if method not in ADAPTIVE | FIXED | STIFF:
            raise UdeError(
                f"unknown method '{method}'",
                source="solver.method",
                fix="one of " + ", ".join(sorted(ADAPTIVE | FIXED | STIFF)),
            )
        if method in STIFF and adjoint:
            raise UdeError(
                f"method '{method}' does not support the adjoint method",
                source="solver.adjoint",
                fix="set solver.adjoint=false (backpropagation goes through the steps)",
            )
        for name, value in (("rtol", rtol), ("atol", atol)):
            if not isinstance(value, (int, float)) or not value > 0:
                raise UdeError(
                    f"expected a positive number, got {value!r}", source=f"solver.{name}"
                )
        if step_size is not None and not step_size > 0:
            raise UdeError(
                f"expected a positive number, got {step_size!r}", source="solver.step_size"
            )
        self.method = method
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.step_size = step_size
        self.adjoint = adjoint
        self.max_steps = int(max_steps)

    def options(self) -> dict[str, Any]:
        if self.method in ADAPTIVE:
            return {"max_num_steps": self.max_steps}
        return {"step_size": self.step_size} if self.step_size else {}

    def __call__(self, func: torch.nn.Module, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Solution ``(time, batch, state)`` at times ``t (time,)`` from ``y0 (batch, state)``."""
        if self.method == "rodas5p":
            try:
                return rodas_autograd.solve(func, y0, t, self.rtol, self.atol, self.max_steps)
            except rodas_autograd.RodasFailed as err:
                raise SolverFailed(str(err)) from None
        if self.method in STIFF:
            try:
                return rosenbrock23(func, y0, t, self.rtol, self.atol, self.max_steps)
            except StiffSolverFailed as err:
                raise SolverFailed(str(err)) from None
        solve = odeint_adjoint if self.adjoint else odeint
        try:
            return solve(
                func,
                y0,
                t,
                rtol=self.rtol,
                atol=self.atol,
                method=self.method,
                options=self.options(),
            )
        except AssertionError as err:  # torchdiffeq signals underflow / step limits this way
            raise SolverFailed(str(err)) from None

    def __repr__(self) -> str:
        return (
            f"Solver(method={self.method!r}, rtol={self.rtol}, atol={self.atol}, "
            f"step_size={self.step_size}, adjoint={self.adjoint})"
        )
