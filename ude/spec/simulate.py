"""Reference simulation of a (fully symbolic) ModelSpec with scipy's stiff-capable solvers."""

from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import solve_ivp

from ude.spec.compile import CompiledExpressions
from ude.spec.model_spec import ModelSpec


def simulate_spec(
    spec: ModelSpec,
    initial: np.ndarray,
    times: np.ndarray,
    inputs: np.ndarray | None = None,
    rtol: float = 1e-9,
    atol: float = 1e-11,
    method: str = "LSODA",
    blow_up: float = 1e6,
) -> np.ndarray:
    """States ``(condition, time, state)`` of ``spec`` (known + discovered terms, parameters at
    their values) from ``initial (condition, state)``; ``inputs (condition, input)``.

    A solve that fails, or whose states grow past ``blow_up`` times the initial scale (a
    distilled twin can diverge in finite time, which a stiff solver would chase with ever
    smaller steps), leaves NaN from that time on.
    """
    if spec.neural:
        raise ValueError("simulate_spec needs a symbolic spec; this one has neural slots")
    initial = np.atleast_2d(np.asarray(initial, dtype=float))
    n_c = initial.shape[0]
    inputs = np.zeros((n_c, len(spec.inputs))) if inputs is None else np.atleast_2d(inputs)
    rhs = CompiledExpressions(spec.known_rhs(), spec.symbols).double()
    params = np.array([p.value for p in spec.parameters.values()], dtype=float)
    times = np.asarray(times, dtype=float)
    out = np.full((n_c, len(times), len(spec.states)), np.nan)
    for c in range(n_c):
        ctx = np.concatenate([inputs[c], params])

        def f(_t, y, ctx=ctx):
            with torch.no_grad():
                v = torch.from_numpy(np.concatenate([y, ctx]))
                return rhs(v).numpy()

        bound = blow_up * (1.0 + np.abs(initial[c]).max())

        def diverged(_t, y, bound=bound):
            return bound - np.abs(y).max()

        diverged.terminal = True
        sol = solve_ivp(
            f,
            (times[0], times[-1]),
            initial[c],
            t_eval=times,
            method=method,
            rtol=rtol,
            atol=atol,
            events=diverged,
        )
        out[c, : sol.y.shape[1]] = sol.y.T
    return out
