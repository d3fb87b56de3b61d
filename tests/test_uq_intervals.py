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


def _laplace_of_constants(monkeypatch) -> SimpleNamespace:
    """A distillation whose twin holds ``c·z/(K + z)`` (``K`` on the log of its box) and a Hill
    ``n`` near the top of its box [1, 12], with a Laplace approximation on their natural
    coordinates; ``k`` is a constant without a box (no interval: not a rate law's)."""
    import ude.distill.uncertainty as uncertainty

    names = ["c_x_0", "K_x_0", "n_x_0", "k_x_1"]
    approx = SimpleNamespace(
        names=names,
        natural_mean=np.array([-1.0, np.log(2.0), 11.9, 0.5]),
        natural_covariance=np.diag([0.01, 0.1**2, 0.2**2, 0.01]),
        free=np.array([True, True, True, True]),
        ranges=SimpleNamespace(
            box=np.array([False, True, True, False]),
            log_box=np.array([False, True, False, False]),
            lower=np.array([-np.inf, np.log(1e-3), 1.0, -np.inf]),
            upper=np.array([np.inf, np.log(1e3), 12.0, np.inf]),
        ),
    )
    monkeypatch.setattr(uncertainty, "laplace", lambda model, measurements: approx)
    monkeypatch.setattr(
        intervals,
        "structure_coefficients",
        lambda *a: {("x", 0): {"term": "z/(z + 2.0)"}, ("x", 1): {"term": "y"}},
    )
    owner = {
        "c_x_0": SimpleNamespace(target="x", index=0, constant=None),
        "K_x_0": SimpleNamespace(target="x", index=0, constant="K"),
        "n_x_0": SimpleNamespace(target="x", index=0, constant="n"),
        "k_x_1": SimpleNamespace(target="x", index=1, constant="K"),
    }
    chosen = SimpleNamespace(candidate=SimpleNamespace(info={"owner": owner}))
    values = {"c_x_0": -1.0, "K_x_0": 2.0, "n_x_0": 11.9, "k_x_1": 0.5}
    return SimpleNamespace(chosen=chosen, model=None, refit=SimpleNamespace(values=values))


def test_a_rate_law_s_constants_get_intervals_on_their_own_scale(monkeypatch):
    """``K``'s interval is its log's, mapped back (not symmetric about it); a Hill ``n`` near
    the top of its box has the truncated marginal's interval, inside the box; a coefficient
    and a constant without a box get none here."""
    found = intervals.constant_intervals(_laplace_of_constants(monkeypatch), None, 0.95)
    assert set(found) == {"K_x_0", "n_x_0"}
    K = found["K_x_0"]
    z = Z.inv_cdf(0.975)
    assert K["value"] == 2.0 and K["constant"] == "K" and K["term"] == "z/(z + 2.0)"
    assert K["interval"] == pytest.approx([2.0 * np.exp(-0.1 * z), 2.0 * np.exp(0.1 * z)])
    lo, hi = found["n_x_0"]["interval"]
    assert lo < 11.9 < hi < 12.0  # the box's top bounds it
    assert 11.9 - lo > 0.2 * z  # the mass the box cuts off above moves the lower end down
    table = intervals.intervals_markdown({}, 0.95, found)
    assert "| x | K of z/(z + 2.0) | 2 | [1.644, 2.433] |" in table
    assert "| x | n of z/(z + 2.0) | 11.9 |" in table
