"""Compile sympy expressions into one batched torch function.

The expressions are reduced by common-subexpression elimination and flattened into a tape of
torch operations, evaluated in order. Nothing is generated as source text or ``exec``'d.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sympy as sp
import torch

Tensor = torch.Tensor

_UNARY: dict[type, Callable[[Tensor], Tensor]] = {
    sp.exp: torch.exp,
    sp.log: torch.log,
    sp.tanh: torch.tanh,
    sp.sin: torch.sin,
    sp.cos: torch.cos,
    sp.Abs: torch.abs,
}


class CompiledExpressions(torch.nn.Module):
    """``f(values) -> outputs`` with values ``(..., n_symbols)`` and outputs ``(..., n_exprs)``.

    ``symbols`` names the columns of ``values``; outputs follow the order of ``exprs``.
    """

    def __init__(self, exprs: Sequence[sp.Expr], symbols: Sequence[str]):
        super().__init__()
        self.symbols = list(symbols)
        self.n_outputs = len(exprs)
        index = {sp.Symbol(n): i for i, n in enumerate(self.symbols)}
        free = set().union(*(sp.sympify(e).free_symbols for e in exprs)) if exprs else set()
        unknown = sorted(str(s) for s in free if s not in index)
        if unknown:
            raise ValueError(f"expressions use undeclared names: {', '.join(unknown)}")
        replacements, reduced = sp.cse([sp.sympify(e) for e in exprs], optimizations="basic")
        # Tape: each step computes one slot from earlier slots. Slots < n_symbols are inputs.
        self._slots: dict[sp.Basic, int] = dict(index)
        self._steps: list[tuple[Callable[..., Tensor], tuple]] = []
        self._n_slots = len(self.symbols)
        for sub, expr in replacements:
            self._slots[sub] = self._emit(expr)
        self._outputs: list[int | float] = []
        for expr in reduced:
            self._outputs.append(float(expr) if expr.is_Number else self._emit(expr))

    def _operand(self, expr: sp.Basic) -> int | float:
        if expr.is_Number:
            return float(expr)
        if expr in self._slots:
            return self._slots[expr]
        return self._emit(expr)

    def _emit(self, expr: sp.Basic) -> int:
        if expr in self._slots:
            return self._slots[expr]
        if isinstance(expr, sp.Add):
            fn, args = _sum, tuple(self._operand(a) for a in expr.args)
        elif isinstance(expr, sp.Mul):
            fn, args = _product, tuple(self._operand(a) for a in expr.args)
        elif isinstance(expr, sp.Pow):
            base, exp = expr.args
            if exp.is_Number:
                e = float(exp)
                fn, args = (
                    (_square, (self._operand(base),))
                    if e == 2.0
                    else (torch.sqrt, (self._operand(base),))
                    if e == 0.5
                    else (torch.reciprocal, (self._operand(base),))
                    if e == -1.0
                    else (_power, (self._operand(base), e))
                )
            else:
                fn, args = _power, (self._operand(base), self._operand(exp))
        elif type(expr) in _UNARY:
            fn, args = _UNARY[type(expr)], (self._operand(expr.args[0]),)
        elif expr.is_Number:
            fn, args = _constant, (float(expr),)
        else:
            raise ValueError(f"cannot compile {type(expr).__name__}: {expr}")
        self._steps.append((fn, args))
        slot = self._n_slots
        self._n_slots += 1
        self._slots[expr] = slot
        return slot

    def forward(self, values: Tensor) -> Tensor:
        slots: list = list(values.unbind(-1))

        def get(a):
            return slots[a] if isinstance(a, int) else a

        for fn, args in self._steps:
            slots.append(fn(*(get(a) for a in args)))
        zeros = values.new_zeros(values.shape[:-1])
        cols = [zeros + get(o) if not isinstance(o, int) else get(o) for o in self._outputs]
        if not cols:
            return values.new_zeros((*values.shape[:-1], 0))
        return torch.stack(cols, dim=-1)


def _sum(*xs):
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def _product(*xs):
    out = xs[0]
    for x in xs[1:]:
        out = out * x
    return out


def _square(x):
    return x * x


def _power(x, e):
    if isinstance(x, float):
        return torch.pow(torch.as_tensor(x, dtype=e.dtype, device=e.device), e)
    return torch.pow(x, e)


def _constant(c):
    return c
