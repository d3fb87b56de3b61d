"""Coefficient intervals averaged over the refitted structures (:mod:`ude.uq.intervals`)."""

from __future__ import annotations

from statistics import NormalDist
from types import SimpleNamespace

import numpy as np
import pytest

import ude.uq.intervals as intervals
from ude.uq.intervals import averaged_intervals, averaged_markdown, mixture_quantile

Z = NormalDist()


def test_one_normal_gives_its_own_quantiles():
    w, m, s = np.array([1.0]), np.array([-2.0]), np.array([0.5])
    for q in (0.025, 0.5, 0.975):
        assert mixture_quantile(w, m, s, 0.0, q) == pytest.approx(-2 + 0.5 * Z.inv_cdf(q), abs=1e-9)


def test_a_term_half_the_structures_leave_out_reaches_zero():
    """Half the weight at zero, half at N(-1, 0.1): the lower end lies in the slab (its 5 %
    quantile), the upper end at zero."""
    w, m, s = np.array([0.5]), np.array([-1.0]), np.array([0.1])
    assert mixture_quantile(w, m, s, 0.5, 0.025) == pytest.approx(-1 + 0.1 * Z.inv_cdf(0.05))
    assert mixture_quantile(w, m, s, 0.5, 0.975) == 0.0
    # a term almost no structure holds: the whole interval is the point mass
    assert mixture_quantile(np.array([0.01]), m, s, 0.99, 0.025) == 0.0


def test_point_masses_are_steps():
    w, m, s = np.array([0.3, 0.7]), np.array([1.0, 2.0]), np.array([0.0, 0.0])
    assert mixture_quantile(w, m, s, 0.0, 0.2) == pytest.approx(1.0)
    assert mixture_quantile(w, m, s, 0.0, 0.5) == pytest.approx(2.0)


def _structures(monkeypatch, coefficients: dict[str, dict]) -> SimpleNamespace:
    """A distillation whose structures A, B (and C) hold ``coefficients[name]``
    ``{(target, index): (value, sd)}`` (None: no Laplace approximation)."""
    scored = {k: SimpleNamespace(name=k, refit=SimpleNamespace(values={})) for k in coefficients}

    def found(result, s, model, values, measurements):
        own = coefficients[s.name]
        if own is None:
            return {}
        return {
            key: {"parameter": f"c_{key[0]}_{key[1]}", "term": f"t{key[1]}", "value": v, "sd": sd}
            for key, (v, sd) in own.items()
        }

    monkeypatch.setattr(intervals, "structure_coefficients", found)
    return SimpleNamespace(
        chosen=scored["A"], refit=SimpleNamespace(values={}), scored=scored, model=None
    )


def _mixture(result, weights: dict[str, float], level: float = 0.95) -> SimpleNamespace:
    comps = [(result.scored[k], w, None, k) for k, w in weights.items()]
    return SimpleNamespace(components=lambda r: (comps, "evidence"), level=level)


def test_averaged_over_two_structures(monkeypatch):
    """A (weight 0.6) holds term 0 at -1 ± 0.1; B (0.4) holds it at -1.2 ± 0.1 and term 1 at
    0.3 ± 0.05. Term 0 is in every structure: its interval spans both; term 1 only in B: its
    interval reaches zero, its upper end B's 0.9375 quantile."""
    result = _structures(
        monkeypatch,
        {"A": {("x", 0): (-1.0, 0.1)}, "B": {("x", 0): (-1.2, 0.1), ("x", 1): (0.3, 0.05)}},
    )
    out, left_out = averaged_intervals(result, None, _mixture(result, {"A": 0.6, "B": 0.4}))
    assert left_out == 0.0
    zero, one = out["x"]["t0"], out["x"]["t1"]
    assert zero["weight"] == pytest.approx(1.0) and zero["structures"] == 2
    assert zero["value"] == pytest.approx(-1.08)
    lo, hi = zero["interval"]
    assert -1.2 - 0.1 * 1.96 < lo < -1.2 and -1.0 < hi < -1.0 + 0.1 * 1.96
    assert one["weight"] == pytest.approx(0.4) and one["structures"] == 1
    assert one["interval"][0] == 0.0
    assert one["interval"][1] == pytest.approx(0.3 + 0.05 * Z.inv_cdf(0.9375))
    text = averaged_markdown(out)
    assert "| x | t1 | 0.40 |" in text and "left out" not in text


def test_a_structure_without_laplace_is_left_out_and_named(monkeypatch):
    """C's Hessian failed: its weight is named, and the others' renormalised (A alone)."""
    result = _structures(monkeypatch, {"A": {("x", 0): (-1.0, 0.1)}, "C": None})
    out, left_out = averaged_intervals(result, None, _mixture(result, {"A": 0.7, "C": 0.3}))
    assert left_out == pytest.approx(0.3)
    assert out["x"]["t0"]["weight"] == pytest.approx(1.0)
    assert out["x"]["t0"]["interval"] == pytest.approx([-1 - 0.1 * 1.959964, -1 + 0.1 * 1.959964])
    assert "weight 0.3 had no Laplace" in averaged_markdown(out, left_out=left_out)
