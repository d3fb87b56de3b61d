"""Reference simulation of a (fully symbolic) ModelSpec with scipy's stiff-capable solvers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy.integrate import solve_ivp

from ude.spec.compile import CompiledExpressions
from ude.spec.model_spec import ModelSpec

if TYPE_CHECKING:
    from ude.data.doses import Dose


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
    doses: Sequence[Sequence[Dose]] | None = None,
    parameters: np.ndarray | None = None,
) -> np.ndarray:
    """States ``(condition, time, state)`` of ``spec`` (known + discovered terms) from
    ``initial (condition, state)``; ``inputs (condition, input)``; ``doses`` one schedule per
    condition (:mod:`ude.data.doses`: the solve restarts at each dose; a state at a dose's
    time is the one before it). Parameter values: ``parameters (condition, parameter)`` when
    given, else the spec's, with each condition's own value for a parameter that has
    per-condition ``values`` (a fitted twin's; as many as conditions).

    A solve that fails, or whose states grow past ``blow_up`` times the initial scale (a
    distilled twin can diverge in finite time, which a stiff solver would chase with ever
    smaller steps), leaves NaN from that time on. With ``max_calls``, a condition whose solve
    needs more right-hand-side calls (a stiff or chaotic candidate) is all NaN: the guard of
    a benchmark that scores many candidate models.
    """
    from ude.data.doses import segments  # ude.data imports this module

    if spec.neural:
        raise ValueError("simulate_spec needs a symbolic spec; this one has neural slots")
    initial = np.atleast_2d(np.asarray(initial, dtype=float))
    n_c = initial.shape[0]
    inputs = np.zeros((n_c, len(spec.inputs))) if inputs is None else np.atleast_2d(inputs)
    # the tape in numpy: a solver's call on a few states costs microseconds, where a torch
    # call's overhead is tens of them (the benchmark scores thousands of candidate models)
    rhs = CompiledExpressions(spec.known_rhs(), spec.symbols)
    params = parameter_matrix(spec, n_c) if parameters is None else np.atleast_2d(parameters)
    times = np.asarray(times, dtype=float)
    out = np.full((n_c, len(times), len(spec.states)), np.nan)
    for c in range(n_c):
        ctx = np.concatenate([inputs[c], params[c]])
        calls = [0]
        rate = np.zeros(len(spec.states))

        def f(_t, y, ctx=ctx, calls=calls, rate=rate):
            calls[0] += 1
            if max_calls is not None and calls[0] > max_calls:
                raise _TooSlow
            return rhs.numpy(np.concatenate([y, ctx])) + rate

        bound = blow_up * (1.0 + np.abs(initial[c]).max())

        def diverged(_t, y, bound=bound):
            return bound - np.abs(y).max()

        diverged.terminal = True
        schedule = [doses[c]] if doses is not None else [()]
        y = np.array(initial[c], dtype=float)
        out[c, 0] = y
        for seg in segments(schedule, spec.states, times[0], times[-1]):
            y = y + seg.jump[0]
            rate[:] = seg.rate[0]
            keep = (times > seg.start) & (times <= seg.end)
            inside = times[keep]
            ends = inside.size and inside[-1] == seg.end
            grid = inside if ends else np.append(inside, seg.end)
            with np.errstate(all="ignore"):
                try:
                    sol = solve_ivp(
                        f,
                        (seg.start, seg.end),
                        y,
                        t_eval=grid,
                        method=method,
                        rtol=rtol,
                        atol=atol,
                        events=diverged,
                    )
                except (_TooSlow, ValueError, OverflowError, ZeroDivisionError):
                    break  # this condition stays NaN from here
            # a solve that fails before its first output point returns ``y`` as an empty list
            ys = np.asarray(sol.y, dtype=float).reshape(len(y), -1)
            found = ys.T[: int(keep.sum())]
            out[c, np.flatnonzero(keep)[: len(found)]] = found
            if ys.shape[1] < len(grid):  # diverged or failed: NaN from here
                break
            y = ys[:, -1]
    return out


def parameter_matrix(spec: ModelSpec, n_conditions: int) -> np.ndarray:
    """The spec's parameter values per condition ``(condition, parameter)``: each
    parameter's value, or its per-condition ``values`` (a fitted twin's)."""
    out = np.tile([p.value for p in spec.parameters.values()], (n_conditions, 1)).astype(float)
    for j, (name, p) in enumerate(spec.parameters.items()):
        if p.values is not None:
            if len(p.values) != n_conditions:
                raise ValueError(
                    f"parameter {name} has {len(p.values)} per-condition values for "
                    f"{n_conditions} conditions"
                )
            out[:, j] = p.values
    return out
