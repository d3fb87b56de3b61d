"""What the figures show: held-out data marked outside the training window, a forecast axis
that ends once the curves have settled, readable time ticks, the benchmark's ∞ cells."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest

from ude.benchmark.report import heatmaps_figure
from ude.data import make_split, simulate_measurements
from ude.distill.plots import forecast_end, settled_time
from ude.plots import plot_data, time_axis, training_window


def test_a_decay_settles_and_an_oscillation_never_does():
    t = np.linspace(0, 30, 3001)
    # exp(-t) is within 1 % of its range of its final value from t = ln(100) = 4.6 on
    assert settled_time(t, [np.exp(-t)]) == pytest.approx(math.log(100), abs=0.01)
    assert settled_time(t, [np.sin(t)]) > 29  # near its last extremum: within 1 % of the end
    assert settled_time(t, [np.full_like(t, 2.0)]) == 0.0
    # the axis ends one training window (here 3) past the later of the window and settling
    assert forecast_end(t, [np.exp(-t)], (0.0, 3.0)) == pytest.approx(math.log(100) + 3, abs=0.01)
    assert forecast_end(t, [np.exp(-10 * t)], (0.0, 3.0)) == pytest.approx(6.0)
    assert forecast_end(t, [np.exp(-t), np.sin(t)], (0.0, 3.0)) == 30.0  # capped
    blown = np.where(t < 5, 1.0, np.inf)
    assert settled_time(t, [blown]) == 30.0


def test_held_out_points_are_marked_and_outside_the_training_window():
    m = simulate_measurements("lotka_volterra", seed=0)  # t in [0, 3], 31 samples
    split = make_split(m, val_after=2.0)
    assert training_window(m, 0, split) == (0.0, 2.0)
    assert training_window(m, 0) == (0.0, 3.0)
    fig, ax = plt.subplots()
    plot_data(ax, m, 0, 0, split.held_out)
    lines = {line.get_label(): line for line in ax.get_lines()}
    held = lines["held out (not fitted)"].get_xdata()
    fitted = lines["data"].get_xdata()
    assert np.all(held > 2.0) and np.all(fitted <= 2.0)
    assert len(held) + len(fitted) == len(m.times)
    plt.close(fig)
    # a condition held out entirely has no training window
    two = simulate_measurements("seir", seed=0)
    whole = make_split(two, val_conditions=[two.conditions[1]])
    assert training_window(two, 1, whole) is None


def test_year_ticks_are_round_and_plain():
    fig, ax = plt.subplots(figsize=(3.0, 2.0))
    ax.plot([1900, 1920], [0, 1])
    time_axis(ax, "year")
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and all(s.isdigit() and int(s) % 5 == 0 for s in labels), labels
    plt.close(fig)


def test_heatmap_marks_a_failed_forecast_as_infinity():
    cell = {"system": "lotka_volterra", "axis": "base", "value": None, "seed": 0, "f1": 0.5}
    rows = [
        {**cell, "method": m, "id": f"lotka_volterra/base/{m}", "forecast_nmse": nmse}
        for m, nmse in (("sindy", math.inf), ("esindy", 2.9))
    ]
    fig = heatmaps_figure(rows)
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert "∞" in texts and "2.9" in texts and "3.00" not in texts
    colours = {t.get_text(): t.get_color() for ax in fig.axes[:2] for t in ax.texts}
    assert colours["∞"] == "white" and "grey" not in colours.values()
    plt.close(fig)
