"""A torch solve over the segments that doses cut a time span into (:mod:`ude.data.doses`), and
the right-hand side of many rows (draws, conditions) solved at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ude.data.doses import Dose, has_doses, segments


def solve_with_doses(
    solver: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    make_rhs: Callable[[torch.Tensor | None], nn.Module],
    y0: torch.Tensor,
    times: torch.Tensor,
    schedules: Sequence[Sequence[Dose]] | None,
    states: Sequence[str],
) -> torch.Tensor:
    """States ``(time, row, state)`` at ``times (time,)`` from ``y0 (row, state)``, each row
    dosed by its schedule: the solve restarts at every dose, bolus amounts added to the state,
    infusion rates ``(row, state)`` handed to ``make_rhs`` (None while nothing is infused).
    A state at the time of a dose is the one just before it. Without doses, one plain solve.
    """
    if schedules is None or not has_doses(schedules):
        return solver(make_rhs(None), y0, times)
    as_t = lambda a: torch.as_tensor(a, dtype=y0.dtype, device=y0.device)  # noqa: E731
    pieces, y = [y0[None]], y0
    for seg in segments(schedules, states, float(times[0]), float(times[-1])):
        if seg.jump.any():
            y = y + as_t(seg.jump)
        inside = times[(times > seg.start) & (times < seg.end)]
        grid = torch.cat([as_t([seg.start]), inside, as_t([seg.end])])
        solution = solver(make_rhs(as_t(seg.rate) if seg.rate.any() else None), y, grid)
        y = solution[-1]
        pieces.append(solution[1:-1])
        if bool((times == seg.end).any()):
            pieces.append(solution[-1:])
    return torch.cat(pieces)


class RowsRHS(nn.Module):
    """A right-hand side ``known(y, context)`` for a batch of rows (draws, conditions), each
    with its own ``context (row, input + parameter)``. A row whose state leaves ``bound`` or
    whose derivative is not finite is marked ``dead`` and frozen (zero derivative), so one
    diverging row neither stops nor slows the others' solve. :meth:`dosing` hands it the
    infusion rates of a dose segment (:func:`solve_with_doses`)."""

    def __init__(
        self,
        known: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        context: torch.Tensor,
        bound: float,
    ):
        super().__init__()
        self.known = known
        self.context = context
        self.bound = bound
        self.dead = torch.zeros(context.shape[0], dtype=torch.bool, device=context.device)
        self.rate: torch.Tensor | None = None

    def dosing(self, rate: torch.Tensor | None) -> RowsRHS:
        """Itself, with the infusion ``rate (row, state)`` of the next dose segment."""
        self.rate = rate
        return self

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.dead |= ~torch.isfinite(y).all(-1) | (y.abs() > self.bound).any(-1)
        dy = self.known(torch.nan_to_num(y), self.context)
        if self.rate is not None:
            dy = dy + self.rate
        self.dead |= ~torch.isfinite(dy).all(-1)
        return torch.where(self.dead[:, None], torch.zeros_like(dy), dy)
