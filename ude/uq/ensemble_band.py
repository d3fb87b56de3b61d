"""The hybrid model's predictive band from an ensemble of networks trained together
(``model.ensemble=N``, :class:`ude.model.ensemble.HybridEnsemble`): every member's trajectory
in one batched solve, each member's draws of new measurements with its own fitted noise
level, pooled; the band is their quantiles. The spread of the members is the networks'
uncertainty (N initialisations fitted to the same data); the noise makes it a band for new
data, not only for the trajectory."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ude.uq.mixture import PredictiveBand


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
    ok = np.isfinite(states).all(axis=(1, 2, 3))
    spec = ensemble.spec
    noise = ensemble.noise.cpu().numpy()  # (member, observable)
    sd = np.zeros((states.shape[0], states.shape[-1]))
    for i, s in enumerate(spec.states):
        if s in ensemble.observable_names and s not in spec.observables:
            sd[:, i] = noise[:, ensemble.observable_names.index(s)]
    q = [(1 - level) / 2, 0.5, (1 + level) / 2]
    good = states[ok]
    if not len(good):
        nan = np.full(states.shape[1:], np.nan)
        return PredictiveBand(
            np.asarray(times), nan, nan, nan, nan, nan, level, len(ok), len(ok), sd.mean(0)
        )
    s_lo, _, s_hi = np.quantile(good, q, axis=0)
    eps = rng.standard_normal((noise_draws, *good.shape))
    noisy = (good[None] + sd[ok][None, :, None, None, :] * eps).reshape(-1, *good.shape[1:])
    lo, med, hi = np.quantile(noisy, q, axis=0)
    return PredictiveBand(
        times=np.asarray(times, dtype=float),
        lower=lo,
        median=med,
        upper=hi,
        state_lower=s_lo,
        state_upper=s_hi,
        level=level,
        n_samples=int(len(ok)),
        n_failed=int((~ok).sum()),
        noise=sd[ok].mean(axis=0),
        components=[{"members": int(ok.sum()), "noise_draws": noise_draws}],
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
        "mean_width": float(np.nanmean(band.upper - band.lower)),
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
