"""Expression tapes (:class:`~ude.spec.compile.CompiledExpressions`) as arrays, and their
forward and reverse sweeps compiled with numba.

A tape is data, not code: opcodes and slot numbers (:func:`encode_tape`), interpreted by
:func:`tape_forward` and differentiated by :func:`tape_reverse`. The compiled solvers read
right-hand sides this way: PEtab's Dormand-Prince (:mod:`ude.petab.kernels`) and Rodas5P
(:mod:`ude.model.rodas_kernels`); :func:`tape_rows` evaluates a tape over many rows in one call
(the known terms of a hybrid model's numpy solve, :mod:`ude.spec.derivatives`).

numba's on-disk cache of a function is checked against its own file only: a kernel that calls
these sweeps from another module would keep its machine code of an older tape. Such modules
call :func:`refresh_cache` on import.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from numba import njit

from ude.spec.compile import CompiledExpressions

# -- opcodes (see ude/spec/compile.py for the tape itself) -------------------------------------
MUL, ADD, ADDCMUL, SCALE, SHIFT, POWC, POWS, RPOW = 0, 1, 2, 3, 4, 5, 6, 7
RECIP, SQRT, EXP, LOG, TANH, SIN, COS, ABS, SIGN = 8, 9, 10, 11, 12, 13, 14, 15, 16
_OPCODES = {
    "mul": MUL,
    "add": ADD,
    "addcmul": ADDCMUL,
    "scale": SCALE,
    "shift": SHIFT,
    "reciprocal": RECIP,
    "sqrt": SQRT,
    "exp": EXP,
    "log": LOG,
    "tanh": TANH,
    "sin": SIN,
    "cos": COS,
    "abs": ABS,
    "sign": SIGN,
}


def encode_tape(expressions: CompiledExpressions) -> tuple[np.ndarray, ...]:
    """``(code (k,), arg (k, 3), const (k,), out (m,), out_const (m,))`` of a tape: slot
    numbers as :class:`CompiledExpressions` numbers them; an output of -1 is a constant."""
    steps = expressions._steps
    code = np.zeros(len(steps), dtype=np.int64)
    arg = np.zeros((len(steps), 3), dtype=np.int64)
    const = np.zeros(len(steps))
    for k, (op, args) in enumerate(steps):
        if op == "pow":
            base, exponent = args
            if type(exponent) is int:
                code[k], arg[k, :2] = POWS, (base, exponent)
            else:
                code[k], arg[k, 0], const[k] = POWC, base, exponent
            continue
        if op == "rpow":
            code[k], const[k], arg[k, 1] = RPOW, args[0], args[1]
            continue
        code[k] = _OPCODES[op]
        slots = [a for a in args if type(a) is int]
        floats = [a for a in args if type(a) is not int]
        arg[k, : len(slots)] = slots
        if floats:
            const[k] = floats[0]
    outs = expressions._outputs
    out = np.array([o if type(o) is int else -1 for o in outs], dtype=np.int64)
    out_const = np.array([0.0 if type(o) is int else float(o) for o in outs])
    return code, arg, const, out, out_const


# -- tapes ---------------------------------------------------------------------------------------
# The sweeps set numba's error model themselves: a callee without it inherits its first caller's
# (numpy's in the Rodas5P kernels, Python's in PEtab's), so a division by zero would give inf in
# one process and raise ZeroDivisionError in another, by which kernel compiled first.
def tape_forward(code, arg, const, slots):
    """Run a tape: ``slots[:n_in]`` hold the inputs, step ``k`` writes ``slots[n_in + k]``."""
    n_in = slots.shape[0] - code.shape[0]
    for k in range(code.shape[0]):
        op = code[k]
        a = arg[k, 0]
        b = arg[k, 1]
        w = const[k]
        if op == MUL:
            v = slots[a] * slots[b]
        elif op == ADD:
            v = slots[a] + w * slots[b]
        elif op == ADDCMUL:
            v = slots[a] + w * slots[b] * slots[arg[k, 2]]
        elif op == SCALE:
            v = slots[a] * w
        elif op == SHIFT:
            v = slots[a] + w
        elif op == POWC:
            v = slots[a] ** w
        elif op == POWS:
            v = slots[a] ** slots[b]
        elif op == RPOW:
            v = w ** slots[b]
        elif op == RECIP:
            v = 1.0 / slots[a]
        elif op == SQRT:
            v = math.sqrt(slots[a]) if slots[a] >= 0.0 else math.nan
        elif op == EXP:
            v = math.exp(slots[a])
        elif op == LOG:
            x = slots[a]
            v = math.log(x) if x > 0.0 else (-math.inf if x == 0.0 else math.nan)
        elif op == TANH:
            v = math.tanh(slots[a])
        elif op == SIN:
            v = math.sin(slots[a])
        elif op == COS:
            v = math.cos(slots[a])
        elif op == SIGN:
            x = slots[a]
            v = 1.0 if x > 0.0 else (-1.0 if x < 0.0 else (0.0 if x == 0.0 else math.nan))
        else:
            v = abs(slots[a])
        slots[n_in + k] = v


def tape_reverse(code, arg, const, slots, adj):
    """Reverse sweep of a tape run by :func:`tape_forward`: ``adj`` holds the outputs'
    cotangents at their slots on entry, every slot's (the inputs' first) on return."""
    n_in = slots.shape[0] - code.shape[0]
    for k in range(code.shape[0] - 1, -1, -1):
        g = adj[n_in + k]
        if g == 0.0:
            continue
        op = code[k]
        a = arg[k, 0]
        b = arg[k, 1]
        w = const[k]
        out = slots[n_in + k]
        if op == MUL:
            adj[a] += g * slots[b]
            adj[b] += g * slots[a]
        elif op == ADD:
            adj[a] += g
            adj[b] += w * g
        elif op == ADDCMUL:
            c = arg[k, 2]
            adj[a] += g
            adj[b] += w * g * slots[c]
            adj[c] += w * g * slots[b]
        elif op == SCALE:
            adj[a] += w * g
        elif op == SHIFT:
            adj[a] += g
        elif op == POWC:
            adj[a] += g * w * slots[a] ** (w - 1.0)
        elif op == POWS:
            x = slots[a]
            adj[a] += g * slots[b] * x ** (slots[b] - 1.0)
            if x > 0.0:
                adj[b] += g * out * math.log(x)
            elif x < 0.0:
                adj[b] += math.nan
        elif op == RPOW:
            adj[b] += g * out * math.log(w)
        elif op == RECIP:
            adj[a] -= g * out * out
        elif op == SQRT:
            adj[a] += 0.5 * g / out
        elif op == EXP:
            adj[a] += g * out
        elif op == LOG:
            adj[a] += g / slots[a]
        elif op == TANH:
            adj[a] += g * (1.0 - out * out)
        elif op == SIN:
            adj[a] += g * math.cos(slots[a])
        elif op == COS:
            adj[a] -= g * math.sin(slots[a])
        elif op == SIGN:
            continue  # zero derivative (away from 0, where it has none)
        else:
            x = slots[a]
            adj[a] += g * (1.0 if x > 0.0 else (-1.0 if x < 0.0 else 0.0))


tape_forward_inlined = njit(nogil=True, error_model="numpy", inline="always")(tape_forward)
tape_reverse_inlined = njit(nogil=True, error_model="numpy", inline="always")(tape_reverse)
"""The sweeps inlined into their caller's machine code, for callers with numpy's error model
only (an inlined sweep takes its caller's): the Rodas5P kernels, where a call of a sweep cost
a fifth of a solve (bench/twin_solve_cost.py)."""
tape_forward = njit(cache=True, nogil=True, error_model="numpy")(tape_forward)
tape_reverse = njit(cache=True, nogil=True, error_model="numpy")(tape_reverse)


@njit(cache=True, nogil=True, error_model="numpy")
def tape_rows(code, arg, const, out, out_const, y, ctx, result):
    """A tape's outputs ``result (R, m)`` at rows ``y (R, n)``, row ``r`` with the context
    ``ctx[r % C] (C, c)``: one context per row, or one per condition for rows that run through
    the conditions in order (stage points ``(S, B)`` flattened)."""
    n = y.shape[1]
    c = ctx.shape[1]
    slots = np.empty(n + c + code.shape[0])
    for r in range(y.shape[0]):
        for i in range(n):
            slots[i] = y[r, i]
        row = r % ctx.shape[0]
        for i in range(c):
            slots[n + i] = ctx[row, i]
        tape_forward(code, arg, const, slots)
        for k in range(out.shape[0]):
            result[r, k] = slots[out[k]] if out[k] >= 0 else out_const[k]


def refresh_cache(module_file: str, *depends_on: str) -> None:
    """Drop numba's cache index of the kernels in ``module_file`` that is older than this
    module (or than another kernel module it calls, ``depends_on``), so they compile again
    with the current sweeps (numba would not notice: it checks a function's own file). The
    default cache place only (``__pycache__`` beside the file)."""
    source = Path(module_file)
    changed = max(Path(f).stat().st_mtime for f in (__file__, *depends_on))
    try:
        for index in (source.parent / "__pycache__").glob(f"{source.stem}.*.nbi"):
            if index.stat().st_mtime < changed:
                index.unlink(missing_ok=True)
    except OSError:  # a read-only install: its caches were built from its own files
        pass
