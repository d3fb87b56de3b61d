"""What is known about each learnable entry of a model before the data: its range and the weak
prior that range implies, on the entry's own scale.

A learned parameter is held on an unbounded raw scale (:mod:`ude.model.parameters`): the
value itself, the log of a positive value (PEtab's ``log``/``log10``, a one-sided bound), or,
between two bounds, the logit of its position between them (on the log scale for a
log-scaled parameter). The logit is the optimiser's convenience, not a scale the parameter
lives on: near a bound it squashes decades of the value into a sliver of the raw axis, so the
Hessian there is near zero whatever the data say, and a raw Gaussian wide enough to cover the
parameter's uncertainty puts its draws at both bounds at once. The entry's natural coordinate
is its position on its own scale, ``x = lower + (upper - lower) sigmoid(raw)``, with the box
``[lower, upper]``.

The prior each entry gets (as a Gaussian precision ``1 / prior_sd²``, centred at the fitted
value by the caller):

- between two bounds: the uniform distribution over the box, PEtab's default prior (uniform
  on the parameter scale within the bounds), by its variance: ``prior_sd = (upper - lower)
  / √12``; the box itself is kept by truncating the draws (:func:`truncated_gaussian`);
- on a log scale without two bounds (the log of a positive value, one-sided bounds, noise
  levels, a population's spread): a uniform prior over :data:`DECADES` decades, the span of
  the common PEtab box ``[1e-5, 1e3]``, by its variance;
- on a linear scale without bounds (a coefficient, a linear initial state): none. Nothing in
  the spec bounds such an entry; where the data do not either, the Laplace approximation's
  eigenvalue floor does, and the report counts those directions apart.

Two kinds of entry live on a log scale though their spec says ``lin``, because the data tie
them to others by products, and a product is a straight line only on a log scale:

- a positive parameter whose box spans :data:`DECADES_FOR_LOG` decades or more (a rate law's
  ``K``, searched and bounded over the decades of its variable's values): its natural
  coordinate is the log of its value, its box and prior those of the log;
- an unbounded linear coefficient that multiplies such a parameter, or a log-scaled one (a
  rate law's maximal rate): the log of its size, its sign held (the structure, with its
  term's sign, is what the Laplace approximation conditions on; rival structures are the
  mixture's). No prior, as on its linear scale.

Why: where the data see a Hill repression ``c K^n / (K^n + z^n)`` only at ``z`` above ``K``
they give ``c K^n`` and ``n``, not ``c`` and ``K`` apart. On the linear coordinates that ridge
is ``c ∝ K^-n``, so curved that a Gaussian along it puts half its draws at a negative ``c``
or at rates a billion times the data's: Goodwin's base twin (``K`` = 0.114 in ``[0.113,
18]``, ``n`` = 9.4) had 145 of its 159 draws fail at ``t = 0`` and no band. On ``ln c``,
``ln K`` the ridge is ``ln c + n ln K`` = const, a line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit
from scipy.stats import truncnorm

from ude.model.hybrid import HybridODE
from ude.model.parameters import _log_view
from ude.spec.model_spec import Parameter

DECADES = 8.0
"""Span (decades) of the weak uniform prior on a log-scale entry without two bounds: that of
the bounds ``[1e-5, 1e3]`` PEtab problems commonly give their log10 parameters."""

DECADES_FOR_LOG = 2.0
"""A positive box at least this many decades wide is searched on the log scale
(:class:`EntryRanges`' ``log_box``): a rate law's ``K`` spans two decades beyond its variable's
range (:data:`ude.distill.projection.K_RANGE`); a Hill ``n`` in ``[1, 15]`` does not."""

_EDGE = 1e-15
"""How close to a bound a draw may be mapped back to the raw logit (a draw at the bound itself
has an infinite logit)."""


@dataclass
class EntryRanges:
    """Per learnable raw entry ``(entry,)``, in the order of ``model.parameters()``:
    ``box`` True where the raw entry is the logit of a position between two bounds, whose
    natural coordinate lies in ``[lower, upper]``: the position itself (``lower + (upper -
    lower) sigmoid(raw)``), or where ``log_box`` its log (``ln(e^lower + (e^upper - e^lower)
    sigmoid(raw))``, a positive box spanning decades). ``sign`` ±1 where the natural
    coordinate is the log of the entry's size (an unbounded coefficient of a product with a
    log-scale entry; the entry is ``sign · e^natural``), 0 elsewhere. Everywhere else the
    natural coordinate is the raw entry and ``lower``/``upper`` are infinite. ``prior_sd``:
    the weak prior's standard deviation on the natural scale (inf: no prior); ``log``: the
    entry's scale is a log (the weak log prior's)."""

    box: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    prior_sd: np.ndarray
    log: np.ndarray
    log_box: np.ndarray
    sign: np.ndarray

    def _ends(self) -> tuple[np.ndarray, np.ndarray]:
        """Each box's ends on the scale its logit runs over (the value's, for a log box)."""
        with np.errstate(over="ignore"):
            lo = np.where(self.log_box, np.exp(self.lower), self.lower)
            hi = np.where(self.log_box, np.exp(self.upper), self.upper)
        return np.where(self.box, lo, 0.0), np.where(self.box, hi, 1.0)

    def natural(self, raw: np.ndarray) -> np.ndarray:
        """Natural coordinates of raw entries ``(..., entry)``."""
        lo, hi = self._ends()
        inside = lo + (hi - lo) * expit(raw)
        with np.errstate(divide="ignore", invalid="ignore"):
            inside = np.where(self.log_box, np.log(inside), inside)
            size = np.log(np.abs(raw))
        return np.where(self.box, inside, np.where(self.sign != 0, size, raw))

    def raw(self, natural: np.ndarray) -> np.ndarray:
        """Raw entries of natural coordinates ``(..., entry)`` (inside their boxes)."""
        lo, hi = self._ends()
        with np.errstate(over="ignore", invalid="ignore"):
            value = np.where(self.log_box, np.exp(natural), natural)
            sized = self.sign * np.exp(natural)
        share = (value - lo) / (hi - lo)
        inside = logit(np.clip(share, _EDGE, 1 - _EDGE))
        return np.where(self.box, inside, np.where(self.sign != 0, sized, natural))

    def slope(self, raw: np.ndarray) -> np.ndarray:
        """``d natural / d raw`` ``(entry,)`` at ``raw``."""
        lo, hi = self._ends()
        s = expit(raw)
        with np.errstate(divide="ignore", invalid="ignore"):
            position = (hi - lo) * s * (1 - s)
            boxed = np.where(self.log_box, position / (lo + (hi - lo) * s), position)
            return np.where(self.box, boxed, np.where(self.sign != 0, 1 / raw, 1.0))

    def bend(self, raw: np.ndarray) -> np.ndarray:
        """``(d² natural / d raw²) / (d natural / d raw)`` ``(entry,)`` at ``raw``."""
        lo, hi = self._ends()
        s = expit(raw)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_term = (hi - lo) * s * (1 - s) / (lo + (hi - lo) * s)
            boxed = 1 - 2 * s - np.where(self.log_box, log_term, 0.0)
            return np.where(self.box, boxed, np.where(self.sign != 0, -1 / raw, 0.0))

    def to_natural_hessian(self, raw: np.ndarray, gradient: np.ndarray, H: np.ndarray):
        """The Hessian ``(entry, entry)`` of a function over the natural coordinates, from its
        ``gradient (entry,)`` and Hessian ``H`` over the raw ones at ``raw`` (the chain rule:
        ``H_raw = D H D + diag(g_natural · x'')``, ``D = diag(x')``)."""
        d = self.slope(raw)
        H = H - np.diag(gradient * self.bend(raw))
        return H / np.outer(d, d)


def _bounded(p: Parameter) -> tuple[float, float, bool] | None:
    """``(lower, upper, log)`` on ``p``'s raw scale's own scale where its raw entry is a logit
    between two bounds (:func:`ude.model.parameters._to_raw`); None elsewhere."""
    view = _log_view(p)
    q = p if view is None else view
    if q.min is not None and q.max is not None:
        return float(q.min), float(q.max), view is not None
    return None


def _log_scaled(p: Parameter) -> bool:
    """Whether ``p``'s raw entry is a log (of the value, or of its distance to a bound)."""
    return _log_view(p) is not None or p.min is not None or p.max is not None


def entry_ranges(model: HybridODE, decades: float = DECADES) -> EntryRanges:
    """The :class:`EntryRanges` of ``model``'s learnable entries (those with
    ``requires_grad``, flattened in the order of ``model.parameters()``; networks' weights,
    which a twin has none of, get no range)."""
    log_sd = decades * math.log(10) / math.sqrt(12)
    # box, lower, upper, prior sd, log, log box, sign
    rows: list[tuple[bool, float, float, float, bool, bool, float]] = []
    first: dict[str, int] = {}  # a learned parameter's first row
    sized: dict[str, int] = {}  # the unbounded linear coefficients among them: their size

    def add(p: Parameter | None, n: int, log: bool = False) -> None:
        bounded = None if p is None else _bounded(p)
        if bounded is not None:
            lo, hi, is_log = bounded
            log_box = not is_log and lo > 0 and math.log10(hi / lo) >= DECADES_FOR_LOG
            if log_box:
                lo, hi, is_log = math.log(lo), math.log(hi), True
            rows.extend([(True, lo, hi, (hi - lo) / math.sqrt(12), is_log, log_box, 0.0)] * n)
        elif log or (p is not None and _log_scaled(p)):
            rows.extend([(False, -math.inf, math.inf, log_sd, True, False, 0.0)] * n)
        else:
            rows.extend([(False, -math.inf, math.inf, math.inf, False, False, 0.0)] * n)

    sp_ = model.parameters_
    for name, tensor in model.named_parameters():
        if not tensor.requires_grad:
            continue
        n = tensor.numel()
        if name.startswith("parameters_.learned."):
            key = name.removeprefix("parameters_.learned.")
            p = sp_.specs[key]
            first[key] = len(rows)
            if key not in sp_.location and p.scale == "lin" and p.min is None and p.max is None:
                sized[key] = n
            # a population's random effects: deviations on the location's scale
            add(None if key in sp_.location else p, n)
        elif name.startswith("parameters_.location."):
            p = sp_.specs[name.removeprefix("parameters_.location.")]
            add(None, n, log=p.population == "lognormal")
        elif name.startswith("parameters_.log_spread.") or name == "log_noise":
            add(None, n, log=True)
        elif name in ("initial", "parametrizations.initial.original"):
            transforms = _initial_transforms(model)
            learned = ~model.initial_known.cpu().numpy()
            for c in range(tensor.shape[0]):
                for i, p in enumerate(transforms):
                    add(p if learned[c, i] else None, 1)
        else:
            add(None, n)
    logged = {key for key, i in first.items() if rows[i][4] and key not in sp_.location}
    for key in _multiplying(model.spec, set(sized), logged):
        values = sp_.learned[key].detach().cpu().numpy().reshape(-1)
        for i in range(sized[key]):
            if values[i] != 0:
                row = first[key] + i
                rows[row] = (*rows[row][:6], float(np.sign(values[i])))
    if not rows:
        return EntryRanges(*[np.zeros(0)] * 7)
    box, lower, upper, sd, log, log_box, sign = (np.array(col) for col in zip(*rows, strict=True))
    return EntryRanges(
        box.astype(bool), lower, upper, sd, log.astype(bool), log_box.astype(bool), sign
    )


def _multiplying(spec, coefficients: set[str], logged: set[str]) -> set[str]:
    """The ``coefficients`` that multiply a parameter of ``logged`` in one of ``spec``'s
    equations (a factor of the same product: ``c`` in ``c*x/(K + x)``)."""
    import sympy as sp

    out: set[str] = set()
    if not coefficients or not logged:
        return out
    for expr in [*spec.equations.values(), *spec.discovered.values()]:
        for node in sp.preorder_traversal(expr):
            if not isinstance(node, sp.Mul):
                continue
            names = {s.name for s in node.free_symbols}
            if names & logged:
                out |= names & coefficients
    return out


def _initial_transforms(model: HybridODE) -> list[Parameter | None]:
    """Each state's initial-value transform (:mod:`ude.model.initial_scale`), or None."""
    from torch.nn.utils import parametrize

    if not parametrize.is_parametrized(model, "initial"):
        return [None] * len(model.spec.states)
    return list(model.parametrizations.initial[0].transforms)


def truncated_gaussian(
    mean: np.ndarray,
    precision: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    n_samples: int,
    rng: np.random.Generator,
    steps: int | None = None,
) -> np.ndarray:
    """``n_samples`` draws ``(sample, entry)`` of the Gaussian ``N(mean, precision⁻¹)``
    truncated to the box ``[lower, upper]`` ``(entry,)`` (infinite ends: open), ``mean``
    inside it (:func:`truncated_normal_draws`)."""
    lam, V = np.linalg.eigh(0.5 * (precision + precision.T))
    return truncated_normal_draws(mean, V / np.sqrt(lam), lower, upper, n_samples, rng, steps)


def truncated_normal_draws(
    mean: np.ndarray,
    factor: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    n_samples: int,
    rng: np.random.Generator,
    steps: int | None = None,
) -> np.ndarray:
    """``n_samples`` draws ``(sample, entry)`` of the Gaussian with ``mean`` and covariance
    ``factor factorᵀ`` (``factor (entry, direction)``; a direction of zero variance may be a
    zero column) truncated to the box ``[lower, upper]`` ``(entry,)`` (infinite ends: open),
    ``mean`` inside it.

    Hit-and-run in the Gaussian's whitened coordinates, one chain per draw, each started at
    ``mean`` (the truncated Gaussian's mode) and run ``steps`` steps (default ``20 ×
    entry``): a random direction, then the position along it drawn from its exact conditional,
    a normal truncated to where the line stays in the box. Each step keeps the truncated
    Gaussian; in whitened coordinates the Gaussian is round, so the chains mix however tightly
    the data tie the entries together (coordinate-wise Gibbs crawls along such a tie). Rejection
    from the untruncated Gaussian would be exact but keeps ``2^-k`` of the draws with ``k``
    entries fitted at a bound; clipping to the box would pile half the draws of such an entry
    onto the bound and break the ties the data impose.
    """
    n, L = len(mean), factor
    if not (np.isfinite(lower).any() or np.isfinite(upper).any()):
        return mean + rng.standard_normal((n_samples, L.shape[1])) @ L.T
    lo, hi = lower - mean, upper - mean
    w = np.zeros((n_samples, L.shape[1]))  # whitened: x = mean + L w
    for _ in range(20 * n if steps is None else steps):
        v = rng.standard_normal(w.shape)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        x, dx = w @ L.T, v @ L.T  # along the line: x + t dx
        with np.errstate(divide="ignore", invalid="ignore"):
            t_a, t_b = (lo - x) / dx, (hi - x) / dx
        moving = dx != 0
        t_min = np.where(moving, np.minimum(t_a, t_b), -np.inf).max(axis=1)
        t_max = np.where(moving, np.maximum(t_a, t_b), np.inf).min(axis=1)
        t_max = np.maximum(t_max, t_min)  # rounding at a wall
        centre = -(w * v).sum(axis=1)  # the line's closest point to the mean
        t = truncnorm.rvs(
            t_min - centre, t_max - centre, loc=centre, size=n_samples, random_state=rng
        )
        w += np.where(np.isfinite(t), t, 0.0)[:, None] * v
    return mean + w @ L.T
