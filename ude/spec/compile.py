"""Compile sympy expressions into one batched torch function.

The expressions are reduced by common-subexpression elimination and flattened into a tape of
torch operations, evaluated in order. Weighted sums use ``torch.add(..., alpha=w)`` and
``torch.addcmul`` so that a coefficient or a two-factor product costs no separate operation:
at the small batches of an ODE solve each torch call costs about the same whatever its size,
so the cost is the number of calls. Nothing is generated as source text or ``exec``'d.

The same tape evaluates on numpy arrays (:meth:`CompiledExpressions.numpy`): a stiff solver's
many small evaluations with frozen parameters cost a numpy call per operation, half a torch
call's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import sympy as sp
import torch

Tensor = torch.Tensor

_UNARY: dict[type, str] = {
    sp.exp: "exp",
    sp.log: "log",
    sp.tanh: "tanh",
    sp.sin: "sin",
    sp.cos: "cos",
    sp.Abs: "abs",
    sp.sign: "sign",  # a Hill term's derivative (ude.spec.derivatives)
}
_SMALL_POWERS = (2, 3, 4)  # x**n as n-1 multiplications: cheaper, and exact for x < 0

# Tape operations. Arguments are slot numbers (int) or Python floats (constants).
_OPS: dict[str, Callable[..., Tensor]] = {
    "mul": torch.mul,
    "add": lambda a, b, w: torch.add(a, b, alpha=w),
    "addcmul": lambda a, b, c, w: torch.addcmul(a, b, c, value=w),
    "scale": torch.mul,  # (slot, float)
    "shift": torch.add,  # (slot, float)
    "pow": torch.pow,  # (slot, float) or (slot, slot)
    "rpow": lambda c, x: torch.pow(c, x),  # (float, slot)
    "reciprocal": torch.reciprocal,
    "sqrt": torch.sqrt,
    "exp": torch.exp,
    "log": torch.log,
    "tanh": torch.tanh,
    "sin": torch.sin,
    "cos": torch.cos,
    "abs": torch.abs,
    "sign": torch.sign,
}
# The same operations on numpy arrays (float64; a weight of 1 or -1 costs no multiplication).
_NUMPY_OPS: dict[str, Callable[..., np.ndarray]] = {
    "mul": np.multiply,
    "add": lambda a, b, w: a + b if w == 1.0 else (a - b if w == -1.0 else a + w * b),
    "addcmul": lambda a, b, c, w: a + b * c if w == 1.0 else a + w * (b * c),
    "scale": np.multiply,
    "shift": np.add,
    "pow": np.power,
    "rpow": np.power,
    "reciprocal": lambda x: 1.0 / x,
    "sqrt": np.sqrt,
    "exp": np.exp,
    "log": np.log,
    "tanh": np.tanh,
    "sin": np.sin,
    "cos": np.cos,
    "abs": np.abs,
    "sign": np.sign,
}


class CompiledExpressions(torch.nn.Module):
    """``f(values) -> outputs`` with values ``(..., n_symbols)`` and outputs ``(..., n_exprs)``.

    ``symbols`` names the columns of ``values``; outputs follow the order of ``exprs``. Any
    leading dimensions (conditions, times) are batched; values and gradients are those of the
    torch operations (``x**0.5`` is ``sqrt``; ``log`` of a negative number is NaN).
    """

    def __init__(self, exprs: Sequence[sp.Expr], symbols: Sequence[str]):
        super().__init__()
        self.symbols = list(symbols)
        self.n_outputs = len(exprs)
        index = {sp.Symbol(n): i for i, n in enumerate(self.symbols)}
        exprs = [sp.sympify(e) for e in exprs]
        free = set().union(*(e.free_symbols for e in exprs)) if exprs else set()
        unknown = sorted(str(s) for s in free if s not in index)
        if unknown:
            raise ValueError(f"expressions use undeclared names: {', '.join(unknown)}")
        replacements, reduced = sp.cse(exprs, optimizations="basic")
        # Tape: each step computes one slot from earlier slots. Slots < n_symbols are inputs.
        self._slots: dict[sp.Basic, int] = dict(index)
        self._steps: list[tuple[str, tuple]] = []
        self._n_slots = len(self.symbols)
        for sub, expr in replacements:
            self._slots[sub] = self._slot(expr)
        self._outputs: list[int | float] = [
            _number(e) if e.is_number else self._slot(e) for e in reduced
        ]
        used = {a for _, args in self._steps for a in args if type(a) is int}
        used |= {o for o in self._outputs if type(o) is int}
        self._used_inputs = sorted(i for i in used if i < len(self.symbols))
        self._torch_steps = [(_OPS[op], args) for op, args in self._steps]
        self._numpy_steps: list[Callable[[list], np.ndarray]] | None = None

    @property
    def n_steps(self) -> int:
        """Number of torch operations per call (besides reading inputs and stacking outputs)."""
        return len(self._steps)

    # -- building the tape ---------------------------------------------------------------------
    def _push(self, op: str, *args: int | float) -> int:
        self._steps.append((op, args))
        self._n_slots += 1
        return self._n_slots - 1

    def _slot(self, expr: sp.Basic) -> int:
        """The slot of ``expr`` (a non-number), emitting the steps that compute it."""
        if expr in self._slots:
            return self._slots[expr]
        if isinstance(expr, sp.Add):
            slot = self._sum(expr)
        elif isinstance(expr, sp.Mul):
            coef, rest = expr.as_coeff_Mul()
            slot = self._product(rest)
            if coef != 1:
                slot = self._push("scale", slot, _number(coef))
        elif isinstance(expr, sp.Pow):
            slot = self._power(expr)
        elif type(expr) in _UNARY and len(expr.args) == 1:
            slot = self._push(_UNARY[type(expr)], self._slot(expr.args[0]))
        elif isinstance(expr, sp.Symbol):
            raise ValueError(f"expressions use undeclared names: {expr}")
        else:
            raise ValueError(f"cannot compile {type(expr).__name__}: {expr}")
        self._slots[expr] = slot
        return slot

    def _factors(self, expr: sp.Basic) -> list[sp.Basic]:
        out: list[sp.Basic] = []
        for f in sp.Mul.make_args(expr):
            # an integral float exponent too (x**2.0: a Hill term's n = 3.0 differentiated),
            # which _power sends here
            if f.is_Pow and f.exp.is_number and _number(f.exp) in _SMALL_POWERS:
                out += [f.base] * int(_number(f.exp))
            else:
                out.append(f)
        return out

    def _product(self, expr: sp.Basic) -> int:
        """Slot of a product without numeric coefficient."""
        factors = self._factors(expr)
        if len(factors) == 1 and factors[0] == expr:
            return self._slot(expr)
        slots = [self._slot(f) for f in factors]
        acc = slots[0]
        for s in slots[1:]:
            acc = self._push("mul", acc, s)
        return acc

    def _sum(self, expr: sp.Add) -> int:
        const = 0.0
        terms: list[tuple[float, sp.Basic]] = []
        for arg in expr.args:
            if arg.is_number:
                const += _number(arg)
                continue
            coef, rest = arg.as_coeff_Mul()
            terms.append((_number(coef), rest))
        # A weight-one term starts the sum without a multiplication, when there is one.
        terms.sort(key=lambda t: t[0] != 1.0)
        w0, first = terms[0]
        acc = self._slot(first) if w0 == 1.0 else self._push("scale", self._slot(first), w0)
        for w, term in terms[1:]:
            factors = self._factors(term)
            if len(factors) == 2 and term not in self._slots:
                a, b = (self._slot(f) for f in factors)
                acc = self._push("addcmul", acc, a, b, w)
            else:
                acc = self._push("add", acc, self._slot(term), w)
        if const:
            acc = self._push("shift", acc, const)
        return acc

    def _power(self, expr: sp.Pow) -> int:
        base, exponent = expr.args
        if exponent.is_number:
            e = _number(exponent)
            if e.is_integer() and int(e) in _SMALL_POWERS:
                return self._product(expr)
            if e == -1.0:
                return self._push("reciprocal", self._slot(base))
            if e == 0.5:
                return self._push("sqrt", self._slot(base))
            if e.is_integer() and -int(e) in _SMALL_POWERS:
                return self._push("reciprocal", self._product(base ** int(-e)))
            return self._push("pow", self._slot(base), e)
        if base.is_number:
            return self._push("rpow", _number(base), self._slot(exponent))
        return self._push("pow", self._slot(base), self._slot(exponent))

    # -- evaluation ----------------------------------------------------------------------------
    def forward(self, values: Tensor) -> Tensor:
        # One unbind: its backward is one stack, where a select per input would be one each.
        slots: list = list(values.unbind(-1))
        for fn, args in self._torch_steps:
            slots.append(fn(*[slots[a] if type(a) is int else a for a in args]))
        if not self._outputs:
            return values.new_zeros((*values.shape[:-1], 0))
        zeros = None
        cols = []
        for o in self._outputs:
            if type(o) is int:
                cols.append(slots[o])
            else:
                zeros = values.new_zeros(values.shape[:-1]) if zeros is None else zeros
                cols.append(zeros + o)
        return torch.stack(cols, dim=-1)

    def numpy(self, values: np.ndarray) -> np.ndarray:
        """The outputs ``(..., n_exprs)`` of float64 ``values (..., n_symbols)`` in numpy;
        division by zero and the like give inf/NaN silently, as in torch."""
        with np.errstate(all="ignore"):
            columns = self.numpy_columns(list(np.moveaxis(values, -1, 0)), values.shape[:-1])
        if not columns:
            return np.zeros((*values.shape[:-1], 0))
        return np.stack(columns, axis=-1)

    def numpy_columns(self, inputs: Sequence[np.ndarray], shape: tuple) -> list[np.ndarray]:
        """Output columns, each of ``shape``, from input columns (one array of ``shape`` per
        symbol), without stacking (a solver's inner loop evaluates the compiled form instead:
        :meth:`ude.spec.derivatives.CompiledDerivatives.evaluate`). Floating-point warnings are
        the caller's to silence (``np.errstate``)."""
        if self._numpy_steps is None:
            self._numpy_steps = [_numpy_step(op, args) for op, args in self._steps]
        slots = list(inputs)
        for step in self._numpy_steps:
            slots.append(step(slots))
        return [slots[o] if type(o) is int else np.full(shape, o) for o in self._outputs]


def _numpy_step(op: str, args: tuple) -> Callable[[list], np.ndarray]:
    """One tape step as a function of the slot list, its arguments resolved once."""
    fn = _NUMPY_OPS[op]
    if len(args) == 1:
        (a,) = args
        return lambda s: fn(s[a])
    if len(args) == 2:
        a, b = args
        if type(a) is int and type(b) is int:
            return lambda s: fn(s[a], s[b])
        if type(a) is int:
            return lambda s: fn(s[a], b)
        return lambda s: fn(a, s[b])
    if len(args) == 3:  # add: two slots and a weight
        a, b, w = args
        return lambda s: fn(s[a], s[b], w)
    a, b, c, w = args  # addcmul
    return lambda s: fn(s[a], s[b], s[c], w)


def _number(x: sp.Basic) -> float:
    value = complex(x)
    if value.imag:
        raise ValueError(f"cannot compile a complex constant: {x}")
    return value.real
