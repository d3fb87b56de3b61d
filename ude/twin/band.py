"""A condition's parameter uncertainty as a Gaussian, from the Laplace approximation of a fit.

The Laplace approximation (:func:`ude.distill.uncertainty.laplace`) is a Gaussian over a model's
raw parameter entries (log- or logit-scaled, random effects, every condition's initial states).
What a condition's simulation needs is smaller: the values of the learned parameters it uses
(the shared ones and its own individual ones) and its learned initial states. Their Gaussian,
on the log scale for positive values, is the raw Gaussian mapped through the derivative of that
map (the delta method); it is what twin.json keeps per condition, and what a twin's band draws
from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ude.model.hybrid import HybridODE


@dataclass
class Gaussian:
    """``entries``: parameter names and ``<state>(0)`` for initial states; ``log``: whether an
    entry is on the log scale (a positive value) or linear; ``mean (entry,)`` and
    ``covariance (entry, entry)`` on those scales."""

    entries: list[str]
    log: list[bool]
    mean: np.ndarray
    covariance: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "entries": list(self.entries),
            "log": list(self.log),
            "mean": [float(x) for x in self.mean],
            "covariance": [[float(x) for x in row] for row in self.covariance],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Gaussian:
        return cls(
            list(raw["entries"]),
            [bool(x) for x in raw["log"]],
            np.asarray(raw["mean"], dtype=float),
            np.asarray(raw["covariance"], dtype=float).reshape(len(raw["entries"]), -1),
        )

    def sample(
        self,
        n: int,
        rng: np.random.Generator,
        fixed: set[str],
        bounds: dict[str, tuple[float | None, float | None]] | None = None,
    ) -> dict[str, np.ndarray]:
        """``n`` draws ``{entry: (n,)}`` on the values' own scale, the entries in ``fixed``
        left out (their marginal over the others is the Gaussian without their rows), each
        entry within its ``bounds`` (``(min, max)`` on the value's own scale, None: open): the
        Gaussian truncated to that box (:func:`ude.uq.parameter_ranges.truncated_normal_draws`),
        as the distillation's band draws; a rate bounded below by 0.01 never draws 0.001."""
        from ude.uq.parameter_ranges import truncated_normal_draws

        keep = [i for i, e in enumerate(self.entries) if e not in fixed]
        if not keep:
            return {}
        cov = self.covariance[np.ix_(keep, keep)]
        lam, vec = np.linalg.eigh(0.5 * (cov + cov.T))
        factor = vec * np.sqrt(np.clip(lam, 0, None))
        lower, upper = np.full(len(keep), -np.inf), np.full(len(keep), np.inf)
        for j, i in enumerate(keep):
            lo, hi = (bounds or {}).get(self.entries[i], (None, None))
            lower[j], upper[j] = self._scaled(i, lo, -np.inf), self._scaled(i, hi, np.inf)
        mean = np.clip(self.mean[keep], lower, upper)  # a value fitted on its bound, rounded
        z = truncated_normal_draws(mean, factor, lower, upper, n, rng)
        return {
            self.entries[i]: np.exp(z[:, j]) if self.log[i] else z[:, j] for j, i in enumerate(keep)
        }

    def _scaled(self, i: int, bound: float | None, open_end: float) -> float:
        """``bound`` of entry ``i`` on the entry's scale (None, or 0 on a log scale: open)."""
        if bound is None:
            return open_end
        if self.log[i]:
            return float(np.log(bound)) if bound > 0 else open_end
        return float(bound)


def condition_gaussians(model: HybridODE, covariance: np.ndarray) -> list[Gaussian]:
    """Each condition's :class:`Gaussian` from the covariance ``(entry, entry)`` of ``model``'s
    learnable raw entries (in the order of ``model.parameters()``, as the Laplace
    approximation's): its learned parameters' values and its learned initial states."""
    params = [p for p in model.parameters() if p.requires_grad]
    sp_ = model.parameters_
    learned = [j for j, name in enumerate(sp_.names) if name in sp_.learned]
    out = []
    for c in range(model.initial.shape[0]):
        values = sp_(torch.tensor([c], device=model.initial.device))[0]
        rows, names, logs = [], [], []
        for j in learned:
            name, v = sp_.names[j], values[j]
            spec = sp_.specs[name]
            positive = float(v.detach()) > 0 and (
                spec.population == "lognormal" or (spec.min is not None and spec.min >= 0)
            )
            rows.append(torch.log(v) if positive else v)
            names.append(name)
            logs.append(positive)
        if model.initial.requires_grad:
            for i, s in enumerate(model.spec.states):
                if not bool(model.initial_known[c, i]):
                    rows.append(model.initial[c, i])
                    names.append(f"{s}(0)")
                    logs.append(False)
        if not rows:
            out.append(Gaussian([], [], np.zeros(0), np.zeros((0, 0))))
            continue
        jac = np.stack([_gradient(r, params) for r in rows])
        mean = np.array([float(r.detach()) for r in rows])
        out.append(Gaussian(names, logs, mean, jac @ covariance @ jac.T))
    return out


def _gradient(y: torch.Tensor, params: list[torch.Tensor]) -> np.ndarray:
    """d y / d params, flattened in their order (zero where ``y`` does not depend on one)."""
    if not y.requires_grad:
        return np.zeros(sum(p.numel() for p in params))
    grads = torch.autograd.grad(y, params, retain_graph=True, allow_unused=True)
    return np.concatenate(
        [
            np.zeros(p.numel()) if g is None else g.detach().cpu().numpy().ravel()
            for g, p in zip(grads, params, strict=True)
        ]
    )
