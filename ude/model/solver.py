"""The ODE solver wrapper over torchdiffeq: method, tolerances, adjoint, step limits."""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from ude.conf import STIFF
from ude.errors import UdeError
from ude.model import rodas_autograd
from ude.model.stiff import StiffSolverFailed, rosenbrock23

ADAPTIVE = {"dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"}
FIXED = {"euler", "midpoint", "heun3", "rk4", "explicit_adams", "implicit_adams"}


class SolverFailed(RuntimeError):
    """The solver gave up (step-size underflow or too many steps, or non-finite states):
    the message names the method, the time reached, the step size and what to try."""


def _failure(method: str, t: float, h: float | None, reason: str) -> SolverFailed:
    step = f"step size {h:.3g}, " if h is not None else ""
    return SolverFailed(
        f"the {method} solver could not integrate past t={t:.6g} ({step}{reason}): the model "
        "blows up or is too stiff there; check its rates and initial values"
        + ("" if method in STIFF else ", or use solver=rodas5p for stiff kinetics")
    )


class _Tracker(nn.Module):
    """Passes ``func`` through and remembers the last time it was called at and the step
    that led there, for the failure message of a torchdiffeq solver (a module, as the
    adjoint method requires; one float conversion per call)."""

    def __init__(self, func):
        super().__init__()
        self.func = func
        self.t: float | None = None
        self.step: float | None = None

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        now = float(t.detach())
        if self.t is not None and now != self.t:
            self.step = now - self.t
        self.t = now
        return self.func(t, y)


class Solver:
    """Solves ``dy/dt = func(t, y)`` for a batch of initial states.

    Args:
        method: a torchdiffeq method name (adaptive: dopri5, bosh3, ...; fixed: rk4, euler, ...)
            or a linearly implicit, L-stable method for stiff kinetics (fast and slow rates,
            Michaelis-Menten terms with a small K) where dopri5 crawls: ``rodas5p`` (order 5,
            compiled with the exact gradient of its steps; :mod:`ude.model.rodas_kernels`) or
            ``rosenbrock23`` (order 2, through torch autograd).
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
        if method in STIFF and adjoint:  # both differentiate their own steps
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
                raise _failure(self.method, err.t, err.h, err.reason) from None
        if self.method in STIFF:
            try:
                return rosenbrock23(func, y0, t, self.rtol, self.atol, self.max_steps)
            except StiffSolverFailed as err:
                raise _failure(self.method, err.t, err.h, err.reason) from None
        solve = odeint_adjoint if self.adjoint else odeint
        tracker = _Tracker(func)
        try:
            out = solve(
                tracker,
                y0,
                t,
                rtol=self.rtol,
                atol=self.atol,
                method=self.method,
                options=self.options(),
            )
        except AssertionError as err:  # torchdiffeq signals underflow / step limits this way
            reached = float(t[0]) if tracker.t is None else tracker.t
            dt = re.search(r"underflow in dt (\S+)", str(err))
            step = float(dt.group(1)) if dt else tracker.step
            step = step if step is not None and math.isfinite(step) else tracker.step
            reason = "step size underflow" if dt else str(err)
            raise _failure(self.method, reached, step, reason) from None
        if self.method in FIXED:
            self._check_finite(out, t)
        return out

    def _check_finite(self, out: torch.Tensor, t: torch.Tensor) -> None:
        """A fixed-step method does not notice a blow-up: the first output time with
        non-finite states is where it failed."""
        finite = torch.isfinite(out.detach()).flatten(1).all(dim=1)
        if bool(finite.all()):
            return
        k = int((~finite).nonzero()[0])
        step = self.step_size or abs(float(t[k]) - float(t[k - 1]))
        raise _failure(self.method, float(t[k - 1]), step, "non-finite states by the next output")

    def __repr__(self) -> str:
        return (
            f"Solver(method={self.method!r}, rtol={self.rtol}, atol={self.atol}, "
            f"step_size={self.step_size}, adjoint={self.adjoint})"
        )
