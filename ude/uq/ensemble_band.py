"""The hybrid model's predictive band from an ensemble of networks trained together
(``model.ensemble=N``, :class:`ude.model.ensemble.HybridEnsemble`): every member's trajectory
in one batched solve, each member's draws of new measurements with its own fitted noise
level, pooled; the band is their quantiles. The spread of the members is the networks'
uncertainty (N initialisations fitted to the same data); the noise makes it a band for new
data, not only for the trajectory. A member whose solve blows up stays in the pool from the
time it does as a draw outside the band (the rule of :mod:`ude.uq.mixture`): past the time
when more than ``1 - level`` of the members have, the band is unbounded."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ude.uq.mixture import PredictiveBand, escape_index, escaped_quantiles


@torch.no_grad()
def ensemble_band(
    ensemble: Any,
    times: np.ndarray,
    level: float = 0.95,
    noise_draws: int = 40,
    seed: int = 0,
) -> PredictiveBand:
    """The band over ``times (time,)`` for every condition of ``ensemble``'s data: state
    quantiles over the members' trajectories ``(member, condition, time, state)`` (one
    solve), predictive quantiles over ``noise_draws`` noisy copies of each member (noise on
    the states measured directly, at that member's level). Members whose solve is not finite
    are dropped and counted."""
    rng = np.random.default_rng(seed)
    dtype = ensemble.initial.dtype
    t = torch.as_tensor(times, dtype=dtype)
    cond = torch.arange(ensemble.initial.shape[1])
    states = ensemble.trajectories(t, cond).cpu().numpy()  # (member, condition, time, state)
    failed = ~np.isfinite(states).all(axis=(1, 2, 3))
    alive = escape_index(states, failed)[:, :, None] > np.arange(len(times))
    spec = ensemble.spec
    noise = ensemble.noise.cpu().numpy()  # (member, observable)
    sd = np.zeros((states.shape[0], states.shape[-1]))
    for i, s in enumerate(spec.states):
        if s in ensemble.observable_names and s not in spec.observables:
            sd[:, i] = noise[:, ensemble.observable_names.index(s)]
    s_lo, _, s_hi = escaped_quantiles(states, alive, level)
    eps = rng.standard_normal((noise_draws, *states.shape))
    with np.errstate(invalid="ignore"):  # a blown-up member's entries are masked anyway
        noisy = (states[None] + sd[None, :, None, None, :] * eps).reshape(-1, *states.shape[1:])
    lo, med, hi = escaped_quantiles(
        noisy,
        np.broadcast_to(alive, (noise_draws, *alive.shape)).reshape(-1, *alive.shape[1:]),
        level,
    )
    return PredictiveBand(
        times=np.asarray(times, dtype=float),
        lower=lo,
        median=med,
        upper=hi,
        state_lower=s_lo,
        state_upper=s_hi,
        level=level,
        n_samples=int(len(failed)),
        n_failed=int(failed.sum()),
        noise=sd[~failed].mean(axis=0) if (~failed).any() else sd.mean(axis=0),
        escaped=1 - alive.mean(axis=0),
        components=[{"members": int((~failed).sum()), "noise_draws": noise_draws}],
    )


def ensemble_band_report(
    ensemble: Any, measurements: Any, horizon: float, level: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """metrics.json's ``ensemble_band``: the hybrid ensemble's band over ``horizon`` times the
    data's span, its mean width and, for synthetic data, the share of the true states inside
    the trajectory band and inside the predictive band."""

    t0, t1 = float(measurements.times[0]), float(measurements.times[-1])
    times = np.linspace(t0, t0 + horizon * (t1 - t0), int(50 * horizon) + 1)
    band = ensemble_band(ensemble, times, level, seed=seed)
    out: dict[str, Any] = {
        "level": level,
        "method": "ensemble of hybrids (one batched solve) + observation noise",
        "members": band.n_samples,
        "n_failed": band.n_failed,
        "horizon": float(times[-1]),
        "mean_width": band.mean_width(),
        "unbounded_from": band.unbounded_from(),
    }
    if measurements.truth is not None and band.usable:
        tr = measurements.truth
        from ude.spec.simulate import simulate_spec

        truth = simulate_spec(
            tr.spec, tr.initial, times, measurements.inputs, rtol=1e-8, atol=1e-10
        )
        truth = truth[..., [tr.spec.states.index(s) for s in ensemble.spec.states]]
        out["coverage_of_truth"] = band.coverage(truth)
        out["predictive_coverage_of_truth"] = band.coverage(truth, noisy=True)
    return out
