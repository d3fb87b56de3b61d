"""Reference simulation of a (fully symbolic) ModelSpec with scipy's stiff-capable solvers."""

from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import solve_ivp

from ude.spec.compile import CompiledExpressions
from ude.spec.model_spec import ModelSpec


class _TooSlow(Exception):
    pass


def simulate_spec(
    spec: ModelSpec,
    initial: np.ndarray,
    times: np.ndarray,
    inputs: np.ndarray | None = None,
    rtol: float = 1e-9,
    atol: float = 1e-11,
    method: str = "LSODA",
    blow_up: float = 1e6,
    max_calls: int | None = None,
) -> np.ndarray:
    """States ``(condition, time, state)`` of ``spec`` (known + discovered terms, parameters at
    their values) from ``initial (condition, state)``; ``inputs (condition, input)``.

    A solve that fails, or whose states grow past ``blow_up`` times the initial scale (a
    distilled twin can diverge in finite time, which a stiff solver would chase with ever
    smaller steps), leaves NaN from that time on. With ``max_calls``, a condition whose solve
    needs more right-hand-side calls (a stiff or chaotic candidate) is all NaN: the guard of
    a benchmark that scores many candidate models.
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
        calls = [0]

        def f(_t, y, ctx=ctx, calls=calls):
            calls[0] += 1
            if max_calls is not None and calls[0] > max_calls:
                raise _TooSlow
            with torch.no_grad():
                v = torch.from_numpy(np.concatenate([y, ctx]))
                return rhs(v).numpy()

        bound = blow_up * (1.0 + np.abs(initial[c]).max())

        def diverged(_t, y, bound=bound):
            return bound - np.abs(y).max()

        diverged.terminal = True
        with np.errstate(all="ignore"):
            try:
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
            except (_TooSlow, ValueError, OverflowError, ZeroDivisionError):
                continue  # this condition stays NaN
        out[c, : sol.y.shape[1]] = sol.y.T
    return out
