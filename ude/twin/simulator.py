"""Many simulations of a symbolic twin at once: one batched torch solve over rows (a point
prediction and the band's draws), each with its own initial state, inputs, parameter values
and doses."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ude.data.doses import Dose
from ude.model.doses import RowsRHS, solve_with_doses
from ude.model.solver import Solver, SolverFailed
from ude.spec.compile import CompiledExpressions
from ude.spec.model_spec import ModelSpec


class Simulator:
    """Solves ``spec`` (no networks) for rows of values.

    Args:
        spec: a symbolic spec (a twin).
        solver: the ODE solver (default dopri5, rtol 1e-6, atol 1e-8).
        blow_up: a row whose states exceed ``blow_up`` times the largest initial state (at
            least 1) has diverged: it is frozen and reported.
    """

    def __init__(self, spec: ModelSpec, solver: Solver | None = None, blow_up: float = 1e3):
        if spec.neural:
            raise ValueError("the simulator needs a symbolic spec; this one has neural slots")
        self.spec = spec
        self.solver = solver or Solver(max_steps=20_000)
        self.blow_up = blow_up
        self.rhs = CompiledExpressions(spec.known_rhs(), spec.symbols).double()
        names = [*spec.observables]
        self.observable_names = names
        self.observe_fn = CompiledExpressions([spec.observables[o] for o in names], spec.symbols)
        self.observe_fn = self.observe_fn.double()

    @torch.no_grad()
    def run(
        self,
        times: np.ndarray,
        initial: np.ndarray,
        inputs: np.ndarray,
        parameters: np.ndarray,
        doses: Sequence[Sequence[Dose]],
        frozen: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """States ``(row, time, state)`` at ``times (time,)`` (the first is where ``initial
        (row, state)`` applies) with ``inputs (row, input)``, ``parameters (row, parameter)`` in
        the spec's order and each row's doses; and ``dead (row,)``: rows whose solve diverged
        (their states are NaN; with ``frozen``, the states up to where the solve stopped the
        row and then constant, from which :func:`ude.uq.escape.escape_index` finds when it
        escaped)."""
        y0 = torch.as_tensor(initial, dtype=torch.float64)
        context = torch.as_tensor(np.concatenate([inputs, parameters], axis=1), dtype=torch.float64)
        t = torch.as_tensor(times, dtype=torch.float64)
        bound = self.blow_up * max(float(y0.abs().max()) if y0.numel() else 1.0, 1.0)
        rhs = RowsRHS(lambda y, ctx: self.rhs(torch.cat([y, ctx], dim=-1)), context, bound)
        try:
            out = solve_with_doses(self.solver, rhs.dosing, y0, t, doses, self.spec.states)
        except SolverFailed:
            n = len(initial)
            return np.full((n, len(times), len(self.spec.states)), np.nan), np.ones(n, bool)
        states = out.transpose(0, 1).numpy().copy()
        dead = rhs.dead.numpy().copy()
        if not frozen:
            states[dead] = np.nan
        return states, dead

    @torch.no_grad()
    def observe(self, states: np.ndarray, inputs: np.ndarray, parameters: np.ndarray) -> np.ndarray:
        """The spec's observables ``(row, time, observable)`` from ``states (row, time,
        state)``."""
        n, n_t, _ = states.shape
        ctx = np.concatenate([inputs, parameters], axis=1)[:, None, :].repeat(n_t, axis=1)
        values = torch.as_tensor(np.concatenate([states, ctx], axis=-1), dtype=torch.float64)
        if not self.observable_names:
            return np.zeros((n, n_t, 0))
        return self.observe_fn(values).numpy()
