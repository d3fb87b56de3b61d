"""Learned initial states on a scale of their own: a PEtab ``init_`` parameter's.

A learned initial value is held as it is (``HybridODE.initial``), one number per condition and
state. A state whose initial value a PEtab problem estimates on a log scale, within bounds
(``init_Y_protein``: ``log10`` in ``[1e-5, 1000]``, nominal ``8e-4``), is learned the way the
problem estimates it instead: through the same transform as a learned spec parameter with that
scale and bounds (:func:`ude.model.parameters._from_raw`: the log of the value, logistic between
the bounds). On the linear scale one Adam step takes ``8e-4`` below zero, where the
repressilator's ``Y^n`` is undefined and the solve fails at ``t = 0``.

A twin's refit can also hold the learned initial values of the states its spec declares
amounts (``nonnegative``) at or above zero, on the log of the value (:func:`initial_transforms`'
``amounts``; ``TwinRefit(nonnegative_initial=True)``, off by default): a refit that may start
an amount below zero can find the pole of a Michaelis-Menten term ``V M/(K + M)`` at
``M = -K`` and fit the first data by the jump out of it. Goldbeter's true structure refitted
from its true initial states over 20 noise draws (``bench/initial_amounts.py``): free, 16
started ``M`` or ``X`` at ``-0.005`` and the 95 % Laplace interval of ``v_d`` held the truth
in 11; held at or above zero, in 15.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ude.model.parameters import _from_raw, _to_raw
from ude.spec.model_spec import Parameter

AMOUNT_FLOOR = 1e-3
"""The least start of a learned initial amount, as a fraction of its state's scale: held on the
log of its value, a start at zero (a noisy first sample clipped there) could never move."""


def initial_transforms(
    states: Sequence[str],
    scales: dict[str, tuple[str, float | None, float | None]],
    amounts: Collection[str] = (),
) -> list[Parameter | None]:
    """Each state's transform ``(state,)`` from ``{state: (scale, lower, upper)}``
    (:attr:`ude.data.measurements.Measurements.initial_scale`): a :class:`Parameter` giving
    the scale and bounds, or None (linear, unbounded: the default). ``amounts``: states
    without a scale of their own held at or above zero (:func:`is_amount`)."""
    out: list[Parameter | None] = []
    for s in states:
        if s not in scales:
            out.append(Parameter(value=1.0, learn=True, min=0.0) if s in amounts else None)
            continue
        scale, lower, upper = scales[s]
        finite = lambda b: b if b is not None and math.isfinite(b) else None  # noqa: E731
        lower, upper = finite(lower), finite(upper)
        if scale == "lin" and lower is None and upper is None:
            out.append(None)
            continue
        # the value only marks the side of zero the log scale needs: starts come per condition
        out.append(Parameter(value=1.0, learn=True, min=lower, max=upper, scale=scale))
    return out


def is_amount(p: Parameter | None) -> bool:
    """Whether ``p`` is an amount's transform: linear, bounded below by zero alone."""
    return p is not None and p.scale == "lin" and p.min == 0 and p.max is None


class InitialScale(nn.Module):
    """The parametrization of ``HybridODE.initial (condition, state)``: entries where ``mask``
    is True are held raw and given by their state's transform; the others as they are (known
    initial values, states without a scale of their own).

    ``transforms (state,)``: a :class:`Parameter` (scale and bounds) or None per state.
    """

    def __init__(self, transforms: Sequence[Parameter | None], mask: torch.Tensor):
        super().__init__()
        self.transforms = list(transforms)
        self.register_buffer("mask", mask.clone(), persistent=False)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        cols = []
        for i, p in enumerate(self.transforms):
            if p is None:
                cols.append(raw[:, i])
                continue
            mask = self.mask[:, i]
            # the transform sees 0 where it does not apply: exp of a large known value
            # would give an infinite, and then NaN, gradient through torch.where
            inside = _from_raw(p, torch.where(mask, raw[:, i], torch.zeros_like(raw[:, i])))
            cols.append(torch.where(mask, inside, raw[:, i]))
        return torch.stack(cols, dim=-1)

    def right_inverse(self, values: torch.Tensor) -> torch.Tensor:
        # contiguous: a start given as a column-major array would otherwise make the raw
        # parameter one, which parameters_to_vector cannot view (the Laplace, the band)
        raw = values.detach().clone(memory_format=torch.contiguous_format)
        for (c, i), v in zip(self.mask.nonzero().tolist(), values[self.mask].tolist(), strict=True):
            p = self.transforms[i]
            raw[c, i] = _to_raw(replace(p, value=_inside(p, v)))
        return raw


def _inside(p: Parameter, value: float) -> float:
    """``value`` moved into ``p``'s bounds (above zero on a log scale): a start outside them (a
    smoothed value below zero) starts at the nearest value the transform reaches."""
    lower = p.min if p.min is not None else -math.inf
    upper = p.max if p.max is not None else math.inf
    if p.scale != "lin":
        lower = max(lower, 1e-300)
    return min(max(value, lower), upper)


def scale_initial(module: nn.Module, transforms: Sequence[Parameter | None]) -> None:
    """Parametrize ``module.initial (condition, state)`` by ``transforms (state,)`` on its
    entries that ``module.initial_known`` does not give; nothing when no state has one."""
    if all(p is None for p in transforms):
        return
    mask = torch.zeros(module.initial.shape, dtype=torch.bool)
    for i, p in enumerate(transforms):
        if p is not None:
            mask[:, i] = ~module.initial_known[:, i].cpu()
    parametrize.register_parametrization(module, "initial", InitialScale(transforms, mask))


def lift_amounts(module: nn.Module, values: torch.Tensor) -> torch.Tensor:
    """``values (condition, state)``, a start for ``module.initial``, with the learned entries of
    its amounts (:func:`is_amount`) at :data:`AMOUNT_FLOOR` of their state's scale or above:
    held on the log of the value, an entry set at zero (a noisy first sample clipped there)
    could never move."""
    if not parametrize.is_parametrized(module, "initial"):
        return values
    scaled = module.parametrizations.initial[0]
    amount = torch.tensor([is_amount(p) for p in scaled.transforms], device=values.device)
    lifted = scaled.mask.to(values.device) & amount
    floor = (AMOUNT_FLOOR * module.state_scale.abs()).to(values)
    return torch.where(lifted, torch.maximum(values, floor), values)


def initial_parameter(module: nn.Module) -> nn.Parameter:
    """The leaf parameter that holds ``module.initial``: itself, or the raw values under
    :class:`InitialScale`."""
    if parametrize.is_parametrized(module, "initial"):
        return module.parametrizations.initial.original
    return module.initial


def set_initial(module: nn.Module, values: torch.Tensor) -> None:
    """Set ``module.initial`` to ``values (condition, state)``, in place, whether it is a plain
    parameter or parametrized by :class:`InitialScale` (which then holds the raw values)."""
    with torch.no_grad():
        if parametrize.is_parametrized(module, "initial"):
            module.initial = values
        else:
            module.initial.copy_(values)


def entry_conditions(model, params: list[torch.Tensor]) -> np.ndarray:
    """``(entry,)``: the condition whose initial state an entry of ``params`` (flattened in
    order) is, -1 for the entries every condition shares."""
    initial = initial_parameter(model)
    out = []
    for p in params:
        if p is initial and p.dim() == 2:
            out.append(np.repeat(np.arange(p.shape[0]), p.shape[1]))
        else:
            out.append(np.full(p.numel(), -1))
    return np.concatenate(out) if out else np.zeros(0, dtype=int)


def held_entries(model, params: list[torch.Tensor]) -> np.ndarray:
    """``(entry,)``: True for the entries of ``params`` (flattened in order) that the model
    holds at their values: the known initial states (``initial_known``)."""
    initial = initial_parameter(model)
    out = []
    for p in params:
        if p is initial:
            out.append(model.initial_known.detach().cpu().numpy().reshape(-1).astype(bool))
        else:
            out.append(np.zeros(p.numel(), dtype=bool))
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)
