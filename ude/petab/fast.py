"""A PEtab problem's solve compiled (:mod:`ude.petab.kernels`), as a differentiable torch
operation.

:func:`compile_system` turns a :class:`~ude.petab.objective.PetabModel`'s right-hand side
(the SBML's rates with the hybridization's substitutions, and the networks evaluated inside
it) into the arrays the kernels interpret; :class:`CompiledSolve` runs Dormand-Prince 5(4)
over every experiment and, backward, the exact adjoint of its accepted steps. Networks given
as chains of ``Linear`` layers and elementwise activations (optionally after a ``cat`` of
their inputs) compile; anything else makes :func:`compile_system` return None and the model
solves through torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp
import torch

from ude.petab import kernels as K
from ude.spec.compile import CompiledExpressions
from ude.spec.tape_kernels import encode_tape  # noqa: F401 (also this module's API)

Tensor = torch.Tensor

_ACTIVATIONS = {
    "tanh": K.A_TANH,
    "relu": K.A_RELU,
    "sigmoid": K.A_SIGMOID,
    "softplus": K.A_SOFTPLUS,
    "silu": K.A_SILU,
    "gelu": K.A_GELU,
    "elu": K.A_ELU,
}


class NotCompilable(Exception):
    """Something the kernels do not represent (the model then solves through torch)."""


def network_chain(net, offset: int) -> tuple[list[list[int]], list[torch.Tensor]]:
    """A PEtab SciML network as layer rows ``[kind, n_in, n_out, w_off, b_off]`` (parameters
    at ``offset`` onwards of a flat vector) and the tensors that vector is made of, in order;
    raises :class:`NotCompilable` for a graph that is not such a chain."""
    from torch import nn

    rows: list[list[int]] = []
    tensors: list[torch.Tensor] = []
    graph = net.graph
    placeholders = [n["name"] for n in graph if n["op"] == "placeholder"]
    current: str | None = placeholders[0] if len(placeholders) == 1 else None
    width: int | None = None
    for node in graph:
        op, target, args = node["op"], node["target"], node.get("args") or []
        kwargs = {k: v for k, v in (node.get("kwargs") or {}).items() if k != "inplace"}
        if op == "placeholder":
            continue
        if op == "call_function" and target == "cat" and current is None:
            # all inputs, in order, along their only axis
            if args and args[0] == placeholders and kwargs.get("dim", 0) in (0, -1):
                current = node["name"]
                continue
            raise NotCompilable("cat")
        if not args or args[0] != current:
            raise NotCompilable("not a chain")
        if op == "output":
            if len(args) != 1 or not rows:
                raise NotCompilable("output")
            return rows, tensors
        if op == "call_module":
            layer = net.layers[target]
            if isinstance(layer, (nn.Identity, nn.Dropout)) and not kwargs:
                if isinstance(layer, nn.Dropout) and layer.p > 0 and net.training:
                    raise NotCompilable("dropout")
                current = node["name"]
                continue
            if type(layer) is not nn.Linear or kwargs or len(args) != 1:
                raise NotCompilable(type(layer).__name__)
            if width is not None and width != layer.in_features:
                raise NotCompilable("shapes")
            w_off = offset + sum(t.numel() for t in tensors)
            tensors.append(layer.weight)
            b_off = -1
            if layer.bias is not None:
                b_off = w_off + layer.weight.numel()
                tensors.append(layer.bias)
            rows.append([K.DENSE, layer.in_features, layer.out_features, w_off, b_off])
            width = layer.out_features
        elif op in ("call_function", "call_method") and target in _ACTIVATIONS:
            if kwargs or len(args) != 1 or width is None:
                raise NotCompilable(target)
            rows.append([_ACTIVATIONS[target], width, width, -1, -1])
        else:
            raise NotCompilable(str(target))
        current = node["name"]
    raise NotCompilable("no output")


@dataclass
class CompiledSystem:
    """The arrays :func:`ude.petab.kernels.rhs` interprets (``arrays`` without the
    parameters), the tensors whose concatenation is the parameter vector, and the sizes of
    the work arrays."""

    arrays: tuple
    tensors: list[torch.Tensor]
    n_states: int
    n_context: int
    work_sizes: tuple[int, int, int, int]

    def params(self) -> Tensor:
        if not self.tensors:
            return torch.zeros(0, dtype=torch.float64)
        return torch.cat([t.reshape(-1) for t in self.tensors])

    def work(self) -> tuple[np.ndarray, ...]:
        """Scratch arrays: tape slots and their cotangents, network activations, ``f``, and
        two vectors as wide as the widest layer."""
        s_in, s_f, buf, width = self.work_sizes
        z = np.zeros
        return (z(s_in), z(s_f), z(buf), z(s_in), z(s_f), z(self.n_states), z(width), z(width))

    def system(self, params: np.ndarray) -> tuple:
        return (*self.arrays, params)


def compile_system(model) -> CompiledSystem | None:
    """The right-hand side of ``model`` (a PetabModel) for the kernels, or None when some
    part of it does not compile."""
    try:
        return _compile(model)
    except NotCompilable:
        return None


def _compile(model) -> CompiledSystem:
    from ude.petab.problem import TIME

    p = model.problem
    states, context = model.states, model.context
    plans = [pl for pl in model.plans if pl.kind == "rhs"]
    base = [*states, *context, TIME]
    hybrid = p.hybridization
    layers: list[list[int]] = []
    nets: list[list[int]] = []
    tensors: list[torch.Tensor] = []
    elements: list[sp.Expr] = []
    outputs: list[str] = []  # the networks' output elements, each network's in order
    for k, pl in enumerate(plans):
        if any(size < 0 for size in pl.arg_sizes):
            raise NotCompilable("array input")
        use = pl.use
        rows, ts = network_chain(use.net, sum(t.numel() for t in tensors))
        x = [hybrid.get(name, sp.Symbol(name)) for arg in use.inputs for name in arg]
        if rows[0][1] != len(x) or any(arg != 0 for arg, _ in use.outputs.values()):
            raise NotCompilable("inputs or outputs")
        by_element = {j: o for o, (_, j) in use.outputs.items()}
        if max(by_element, default=-1) >= rows[-1][2]:
            raise NotCompilable("outputs")
        nets.append([len(layers), len(layers) + len(rows), len(elements), len(outputs)])
        layers.extend(rows)
        tensors.extend(ts)
        elements.extend(x)
        outputs.extend(by_element.get(j, f"__net{k}_{j}") for j in range(rows[-1][2]))
    # The hybridization's targets among the model parameters become their expressions in
    # the networks' outputs (and the context).
    subs = {}
    if "rhs" in model._targets:
        for t, v in hybrid.items():
            if t in context and any(str(s) in outputs for s in v.free_symbols):
                subs[sp.Symbol(t)] = v
    try:
        f_tape = CompiledExpressions(
            [e.xreplace(subs) for e in p.spec.known_rhs()], [*base, *outputs]
        )
        in_tape = CompiledExpressions(elements, base)
    except ValueError as err:  # an operation the tape has no kernel for
        raise NotCompilable(str(err)) from None
    arrays = (
        *encode_tape(in_tape),
        *encode_tape(f_tape),
        np.array(layers, dtype=np.int64).reshape(-1, 5),
        np.array(nets, dtype=np.int64).reshape(-1, 4),
    )
    buf = sum(r[1] for r in layers) + max((r[2] for r in layers), default=0) + 1
    width = max((max(r[1], r[2]) for r in layers), default=1)
    sizes = (len(base) + in_tape.n_steps, len(base) + len(outputs) + f_tape.n_steps, buf, width)
    return CompiledSystem(arrays, tensors, len(states), len(context), sizes)


class SolveFailed(RuntimeError):
    def __init__(self, status: int, t: float, h: float):
        reason = "step size underflow" if status == K.UNDERFLOW else "too many steps"
        super().__init__(reason)
        self.reason, self.t, self.h = reason, t, h


class CompiledSolve(torch.autograd.Function):
    """``states (experiment, time, state)`` from ``y0 (experiment, state)``, the context
    ``(experiment, c)`` and the networks' flat parameters, through :func:`kernels.dopri5`."""

    @staticmethod
    def forward(ctx, system: CompiledSystem, options: tuple, times: Tensor, y0, context, params):
        rtol, atol, max_steps = options
        np_params = params.detach().cpu().numpy().astype(np.float64, copy=False)
        P = system.system(np_params)
        W = system.work()
        t = times.detach().cpu().numpy()
        y0_np = y0.detach().cpu().numpy()
        c_np = context.detach().cpu().numpy()
        out, records = [], []
        for e in range(y0_np.shape[0]):
            res = K.dopri5(y0_np[e], t, c_np[e], P, W, rtol, atol, max_steps)
            if res[6] != K.OK:
                raise SolveFailed(int(res[6]), float(res[7]), float(res[8]))
            out.append(res[0])
            records.append(res[1:6])
        ctx.system, ctx.P, ctx.W, ctx.records, ctx.c_np = system, P, W, records, c_np
        ctx.shapes = (y0, context, params)
        return torch.as_tensor(np.stack(out), dtype=y0.dtype)

    @staticmethod
    def backward(ctx, grad):
        g = grad.detach().cpu().numpy()
        y0, context, params = ctx.shapes
        g_y0 = np.zeros(tuple(y0.shape))
        g_ctx = np.zeros(tuple(context.shape))
        g_par = np.zeros(params.shape[0])
        for e, (rt, rh, ry, rk, ostep) in enumerate(ctx.records):
            g_y0[e] = K.dopri5_adjoint(
                np.ascontiguousarray(g[e]),
                rt,
                rh,
                ry,
                rk,
                ostep,
                ctx.c_np[e],
                ctx.P,
                ctx.W,
                g_ctx[e],
                g_par,
            )
        as_t = lambda a: torch.as_tensor(a, dtype=y0.dtype)  # noqa: E731
        return None, None, None, as_t(g_y0), as_t(g_ctx), as_t(g_par)
