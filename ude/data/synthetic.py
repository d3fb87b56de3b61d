"""Synthetic measurements from a zoo system: simulate the truth, sample, add noise."""

from __future__ import annotations

import numpy as np

from ude.data.measurements import Measurements, Truth
from ude.errors import UdeError
from ude.spec.simulate import simulate_spec
from ude.systems import get_system, system_names


def simulate_measurements(
    system: str,
    noise: float | None = None,
    n_times: int | None = None,
    t_end: float | None = None,
    initial: list[list[float]] | None = None,
    replicates: int = 1,
    noise_scale: str = "mean",
    observed: list[str] | None = None,
    seed: int = 0,
    known_initial: list[str] | None = None,
) -> Measurements:
    """Noisy samples of zoo ``system`` (defaults from its scenario).

    Noise is Gaussian with standard deviation ``noise`` times each series' mean absolute value
    (``noise_scale='mean'``) or range (``'range'``), per condition and observable.
    ``known_initial`` names states whose true initial values are given to the model, as a
    conditions table's ``init_<state>`` columns would (None: the scenario's, e.g. the enzyme's
    E and C, which its assay sets; ``[]``: none).
    """
    if system not in system_names():
        raise UdeError(
            f"'{system}' is not a zoo system",
            source="data.system",
            fix="data=synthetic simulates a zoo system ("
            + ", ".join(system_names())
            + "); use data=csv data.path=... for your own data",
        )
    sys_ = get_system(system)
    sc = sys_.scenario
    noise = sc.noise if noise is None else float(noise)
    n_times = sc.n_times if n_times is None else int(n_times)
    t_end = sc.t_end if t_end is None else float(t_end)
    initial_ = np.array(sc.initial if initial is None else initial, dtype=float)
    observed = list(sc.observed if observed is None else observed)
    if noise < 0 or n_times < 2 or t_end <= sc.t_start or replicates < 1:
        raise UdeError(
            f"noise={noise}, n_times={n_times}, t_end={t_end}, replicates={replicates}",
            source="data",
            fix="noise >= 0, n_times >= 2, t_end > start, replicates >= 1",
        )
    if noise_scale not in {"mean", "range"}:
        raise UdeError(
            f"unknown noise_scale '{noise_scale}'", source="data.noise_scale", fix="mean or range"
        )
    spec = sys_.truth
    unknown = [o for o in observed if o not in spec.states]
    if unknown or initial_.ndim != 2 or initial_.shape[1] != len(spec.states):
        raise UdeError(
            f"observed={observed}, initial shape {initial_.shape}",
            source="data",
            fix=f"observe states of {spec.states}; one initial state of "
            f"{len(spec.states)} values per condition",
        )
    known_initial = list(sc.known_initial if known_initial is None else known_initial)
    if any(s not in spec.states for s in known_initial):
        raise UdeError(
            f"known_initial={known_initial}",
            source="data.known_initial",
            fix="name states of " + ", ".join(spec.states),
        )
    times = np.linspace(sc.t_start, t_end, n_times)
    inputs = np.array(sc.inputs, dtype=float) if sc.inputs else None
    states = simulate_spec(spec, initial_, times, inputs)
    cols = [spec.states.index(o) for o in observed]
    clean = states[:, :, cols]
    scale = series_scale(clean, noise_scale)
    rng = np.random.default_rng(seed)
    noisy = clean[:, :, None, :] + noise * scale[:, :, None, :] * rng.standard_normal(
        (clean.shape[0], n_times, replicates, len(cols))
    )
    n_c = initial_.shape[0]
    return Measurements(
        times=times,
        values=noisy,
        observables=observed,
        conditions=[f"c{i}" for i in range(n_c)],
        input_names=list(spec.inputs),
        inputs=inputs if inputs is not None else np.zeros((n_c, 0)),
        initial={s: initial_[:, spec.states.index(s)].copy() for s in known_initial},
        truth=Truth(spec=spec, initial=initial_, missing=dict(sys_.missing)),
        source=f"synthetic:{system}",
    )


def series_scale(clean: np.ndarray, noise_scale: str) -> np.ndarray:
    """Each series' scale ``(condition, 1, observable)`` of noise-free values ``clean
    (condition, time, observable)``: its mean absolute value (``'mean'``) or its range
    (``'range'``); the noise's standard deviation is ``noise`` times it."""
    if noise_scale == "mean":
        return np.abs(clean).mean(axis=1, keepdims=True)
    return clean.max(axis=1, keepdims=True) - clean.min(axis=1, keepdims=True)
