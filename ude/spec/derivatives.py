"""Derivatives of a spec's known right-hand side in the states, compiled once from sympy.

A stiff solver needs the Jacobian ``df/dy`` at every step, and the exact gradient of its
steps needs the second derivatives too (the Jacobian is inside the step's linear system).
Both are taken symbolically from the spec's expressions, kept sparse (kinetics couple few
species: only the nonzero entries are compiled) and compiled into tapes
(:class:`~ude.spec.compile.CompiledExpressions`) that share common subexpressions with the
right-hand side itself. No autograd is involved, so an evaluation costs one tape pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import sympy as sp
import torch

from ude.spec.compile import CompiledExpressions


class _Abs(sp.Function):
    """``|a|`` while differentiating: sympy's own ``Abs`` of a (complex) symbol differentiates
    into ``re()`` and ``im()``, which do not compile; here ``d|a|/da = sign(a)`` (a real
    argument), whose derivative is zero. So ``d|x|^n/dx = n |x|^(n-1) sign(x)``: 0 at
    ``x = 0`` for ``n > 1`` (a Hill term whose variable starts at zero), where the form
    ``(x^2)^(n/2) / x`` of ``sqrt(x^2)^n`` is 0/0."""

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return _Sign(self.args[0])


class _Sign(sp.Function):
    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.Integer(0)


def _compilable(d: sp.Expr) -> sp.Expr:
    """A derivative with :class:`_Abs` and :class:`_Sign` in compilable form: ``|a|^n / |a|``
    merged into ``|a|^(n-1)`` (finite at 0), then ``Abs`` and ``sign``."""
    if not d.has(_Abs, _Sign):
        return d
    d = sp.powsimp(d, combine="exp", force=True)
    return d.replace(_Abs, sp.Abs).replace(_Sign, sp.sign)


class CompiledDerivatives:
    """``f``, ``df/dy`` and the second derivatives ``d2f/dy2`` of ``exprs`` in the first
    ``n_states`` of ``symbols`` (the states; the rest are inputs and parameters).

    Evaluations take the states ``y (P, state)`` and the values of the rest of ``symbols``, in
    order, as ``context`` (see :meth:`evaluate`); ``P`` is any leading shape.
    """

    def __init__(self, exprs: Sequence[sp.Expr], symbols: Sequence[str], n_states: int):
        exprs = [sp.sympify(e) for e in exprs]
        self.symbols = list(symbols)
        self.n_states = n_states
        states = [sp.Symbol(s) for s in self.symbols[:n_states]]
        jac: list[sp.Expr] = []
        rows, cols = [], []
        for k, e in enumerate(exprs):
            # |a| differentiated as a real function (see _Abs): a Hill term's |x|^n
            e = e.replace(sp.Abs, _Abs)
            for m, y in enumerate(states):
                d = sp.diff(e, y) if y in e.free_symbols else sp.Integer(0)
                if d != 0:
                    rows.append(k)
                    cols.append(m)
                    jac.append(d)
        # Second derivatives d2 f_k / dy_l dy_m, symmetric in (l, m): compiled once for
        # l <= m, used in both orders by the contraction.
        hess: list[sp.Expr] = []
        k_idx, l_idx, m_idx, which = [], [], [], []
        for e_kl, k, col in zip(jac, rows, cols, strict=True):
            for m in range(col, n_states):
                y = states[m]
                d = sp.diff(e_kl, y) if y in e_kl.free_symbols else sp.Integer(0)
                if d == 0:
                    continue
                hess.append(_compilable(d))
                for a, b in {(col, m), (m, col)}:
                    k_idx.append(k)
                    l_idx.append(a)
                    m_idx.append(b)
                    which.append(len(hess) - 1)
        jac = [_compilable(d) for d in jac]
        self.jac_rows = np.array(rows, dtype=np.intp)
        self.jac_cols = np.array(cols, dtype=np.intp)
        self._hess_k = np.array(k_idx, dtype=np.intp)
        self._hess_l = np.array(l_idx, dtype=np.intp)
        self._hess_m = np.array(m_idx, dtype=np.intp)
        self._hess_which = np.array(which, dtype=np.intp)
        # Summing the terms onto their state m is one matrix product.
        self._hess_select = np.zeros((len(m_idx), n_states))
        self._hess_select[np.arange(len(m_idx)), m_idx] = 1.0
        self.n_exprs = len(exprs)
        self.value = CompiledExpressions(exprs, self.symbols)
        self.value_and_jac = CompiledExpressions(exprs + jac, self.symbols)
        self.jac = CompiledExpressions(jac, self.symbols)
        self.hess = CompiledExpressions(hess, self.symbols)
        self._tapes: dict[str, tuple[np.ndarray, ...]] = {}  # :meth:`encoded`

    @property
    def jac_nnz(self) -> int:
        """Number of nonzero Jacobian entries (as expressions)."""
        return len(self.jac_rows)

    def _dense(self, entries: np.ndarray) -> np.ndarray:
        """The nonzero entries ``(*P, nnz)`` as the dense Jacobian ``(*P, expr, state)``."""
        out = np.zeros((*entries.shape[:-1], self.n_exprs, self.n_states))
        out[..., self.jac_rows, self.jac_cols] = entries
        return out

    def f(self, y: np.ndarray, context: np.ndarray) -> np.ndarray:
        """``f (P, expr)`` at the states ``y (P, state)`` and the other symbols' values
        ``context`` (see :meth:`evaluate`)."""
        return self.evaluate("value", y, context)

    def f_jac(self, y: np.ndarray, context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``f (P, expr)`` and the dense Jacobian ``(P, expr, state)``."""
        out = self.evaluate("value_and_jac", y, context)
        return out[..., : self.n_exprs], self._dense(out[..., self.n_exprs :])

    def jacobian(self, y: np.ndarray, context: np.ndarray) -> np.ndarray:
        """The dense Jacobian ``(P, expr, state)``."""
        return self._dense(self.evaluate("jac", y, context))

    def hessian_values(self, y: np.ndarray, context: np.ndarray) -> np.ndarray:
        """The distinct nonzero second derivatives ``(P, entry)``, for
        :meth:`contract_hessian`."""
        return self.evaluate("hess", y, context)

    def encoded(self, tape: str) -> tuple[np.ndarray, ...]:
        """``tape`` (``value``, ``value_and_jac``, ``jac`` or ``hess``) as the compiled kernels
        read it (:func:`~ude.spec.tape_kernels.encode_tape`), encoded once."""
        if tape not in self._tapes:
            from ude.spec.tape_kernels import encode_tape  # numba: on first use

            self._tapes[tape] = encode_tape(getattr(self, tape))
        return self._tapes[tape]

    def evaluate(self, tape: str, y: np.ndarray, context: np.ndarray) -> np.ndarray:
        """The outputs ``(*P, m)`` of ``tape`` (``value``, ``value_and_jac``, ``jac`` or
        ``hess``) at float64 states ``y (*P, state)`` and the other symbols' values ``context
        (*C, symbol - state)``, broadcast as numpy does (a solve's stage points ``(S, B)``
        share their conditions' ``(B,)``): one compiled pass over the rows
        (:func:`~ude.spec.tape_kernels.tape_rows`), where a pass per tape step in numpy costs
        a Python call each. Division by zero and the like give inf/NaN silently."""
        from ude.spec.tape_kernels import tape_rows  # numba: on first use

        encoded = self.encoded(tape)
        shape = y.shape[:-1]
        width = context.shape[-1]
        lead = context.shape[:-1]
        if lead != shape[len(shape) - len(lead) :]:  # not a trailing part: one context per row
            context = np.broadcast_to(context, (*shape, width))
            lead = shape
        rows = np.ascontiguousarray(y, dtype=np.float64).reshape(-1, y.shape[-1])
        per_row = np.ascontiguousarray(context, dtype=np.float64).reshape(math.prod(lead), width)
        out = np.empty((rows.shape[0], len(encoded[3])))
        tape_rows(*encoded, rows, per_row, out)
        return out.reshape(*shape, out.shape[-1])

    def jacobian_torch(self, values: torch.Tensor) -> torch.Tensor:
        """The dense Jacobian ``(..., expr, state)`` of ``values (..., symbol)`` in torch,
        differentiable (to any order) in the values."""
        entries = self.jac(values)
        out = values.new_zeros((*values.shape[:-1], self.n_exprs * self.n_states))
        flat = torch.as_tensor(self.jac_rows * self.n_states + self.jac_cols, device=out.device)
        out = out.index_add(-1, flat, entries)
        return out.reshape(*values.shape[:-1], self.n_exprs, self.n_states)

    def contract_hessian(self, values: np.ndarray, omega: np.ndarray) -> np.ndarray:
        """``sum_kl omega[k, l] d2f_k / dy_l dy_m`` ``(P, state)``: the gradient in ``y`` of
        ``<df/dy, omega>``, from :meth:`hessian_values` ``(P, entry)`` and ``omega (P, expr,
        state)``."""
        if not len(self._hess_k):
            return np.zeros((*values.shape[:-1], self.n_states))
        terms = omega[..., self._hess_k, self._hess_l] * values[..., self._hess_which]
        return terms @ self._hess_select


@lru_cache(maxsize=64)
def _cached(exprs: tuple, symbols: tuple, n_states: int) -> CompiledDerivatives:
    return CompiledDerivatives(exprs, symbols, n_states)


def compiled_derivatives(
    exprs: Sequence[sp.Expr], symbols: Sequence[str], n_states: int
) -> CompiledDerivatives:
    """:class:`CompiledDerivatives`, built once per distinct right-hand side (a twin is
    rebuilt for every refit; its derivatives are not)."""
    return _cached(tuple(sp.sympify(e) for e in exprs), tuple(symbols), n_states)
