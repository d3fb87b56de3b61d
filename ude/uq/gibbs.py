"""A Gibbs sampler for the horseshoe with a Gaussian slab, every conditional exact (numpy).

The model, on a standardised system ``y (point,) ≈ X (point, term) β``:

    y | β, σ²   ~ Normal(X β, σ² I)
    p(σ²)       ∝ 1 / σ²
    τ           ~ HalfCauchy(τ0),    λ_j ~ HalfCauchy(1)
    p(β | λ, τ, σ²)  ∝  Π_j Normal(β_j; 0, σ² τ² λ_j²) · Normal(β_j; 0, c²)

The last line is the horseshoe's Gaussian times an independent Gaussian slab of fixed scale
``c``, written as one joint density (the slab's product is not renormalised per ``λ``): given
the scales, ``β_j``'s variance is ``σ²τ²λ_j² c² / (c² + σ²τ²λ_j²)``, the regularised
horseshoe's; the slab's factor does not depend on ``λ``, ``τ`` or ``σ²``, so each of their
conditionals is the plain horseshoe's and stays conjugate. With the auxiliary variables of
Makalic & Schmidt (2016), "A simple sampler for the horseshoe estimator", IEEE Signal
Process. Lett. 23:179 (``λ_j² | ν_j ~ InvGamma(1/2, 1/ν_j)``, ``ν_j ~ InvGamma(1/2, 1)``, and
the same for ``τ²`` with ``ξ``), one sweep draws

    β   | rest ~ Normal(A⁻¹ Xᵀy / σ², A⁻¹),  A = XᵀX / σ² + diag(1/(σ²τ²λ²) + 1/c²)
    σ²  | rest ~ InvGamma((n + p)/2, (‖y − Xβ‖² + Σ β_j²/(τ²λ_j²)) / 2)
    λ_j²| rest ~ InvGamma(1, 1/ν_j + β_j² / (2σ²τ²)),     ν_j | λ_j ~ InvGamma(1, 1 + 1/λ_j²)
    τ²  | rest ~ InvGamma((p + 1)/2, 1/ξ + Σ β_j²/(2σ²λ_j²)),  ξ | τ ~ InvGamma(1, 1/τ0² + 1/τ²)

This is the "shrunken shoulder" construction of Nishimura & Suchard (2023), "Shrinkage with
shrunken shoulders: Gibbs sampling shrinkage model posteriors with guaranteed convergence
rates", Bayesian Anal. 18:367 (arXiv:1911.02160). It differs from Piironen & Vehtari's
(2017) regularised horseshoe in three ways:

- the scales' prior: integrating ``β_j`` out of the joint leaves ``p(λ_j | τ, σ²) ∝
  HalfCauchy(λ_j) / √(c² + σ²τ²λ_j²)`` (the same factor falls on ``τ`` and ``σ²``). Below
  the slab (``στλ ≪ c``) the factor is constant and nothing changes; past it a local scale's
  tail falls as ``λ⁻³`` instead of ``λ⁻²``, so less prior mass sits where ``β`` has the
  slab's full variance: large coefficients are a little less likely a priori;
- ``c`` is fixed, where Piironen & Vehtari give ``c²`` an inverse-gamma prior (a Student-t
  slab);
- ``σ²`` has Jeffreys' prior, where theirs is half-normal on the standardised scale (with
  tens of points the likelihood dominates either).

All chains advance together (numpy's batched Cholesky over ``(chain, term, term)``), from the
sufficient statistics ``XᵀX``, ``Xᵀy``: the cost of a sweep does not grow with the data.
"""

from __future__ import annotations

import numpy as np

_TINY, _HUGE = 1e-150, 1e150


def _inverse_gamma(rng: np.random.Generator, shape: float, scale: np.ndarray) -> np.ndarray:
    """Draws of ``InvGamma(shape, scale)``, one per entry of ``scale``."""
    return scale / rng.gamma(shape, size=np.shape(scale))


def horseshoe_gibbs(
    X: np.ndarray,
    y: np.ndarray,
    tau0: float,
    slab: float,
    num_samples: int,
    warmup: int,
    chains: int,
    thin: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Draws of the model above: ``beta (chain, sample, term)``, ``sigma`` and ``tau``
    ``(chain, sample)`` (``τ`` is the prior's, so ``β``'s local scale is ``σ τ λ``).

    Args:
        X: ``(point, term)`` standardised columns; ``y (point,)``.
        tau0: the global scale's prior scale.
        slab: ``c``, the slab's standard deviation (the units of ``β``).
        num_samples: draws kept per chain, each ``thin`` sweeps apart.
        warmup: sweeps discarded first.
        chains: chains, each from its own dispersed start.
    """
    n, p = X.shape
    S, r, q = X.T @ X, X.T @ y, float(y @ y)
    eye = np.eye(p)
    c2 = slab**2
    # dispersed starts: the scales drawn from their priors, σ² around a ridge fit's residual
    ridge = np.linalg.solve(S + np.eye(p), r)
    resid = max(float(np.mean((y - X @ ridge) ** 2)), 1e-12)
    s2 = resid * np.exp(rng.normal(0.0, 1.0, chains))
    lam2 = rng.standard_cauchy((chains, p)) ** 2
    tau2 = (tau0 * rng.standard_cauchy(chains)) ** 2
    nu = _inverse_gamma(rng, 1.0, 1 + 1 / lam2)
    xi = _inverse_gamma(rng, 1.0, 1 / tau0**2 + 1 / tau2)
    beta = np.zeros((chains, p))
    total = warmup + num_samples * thin
    out_beta = np.empty((chains, num_samples, p))
    out_s2 = np.empty((chains, num_samples))
    out_tau2 = np.empty((chains, num_samples))
    with np.errstate(divide="ignore", over="ignore", under="ignore"):
        for step in range(total):
            # β | rest, in the scaled form D (I + D S D / σ²)⁻¹ D: well posed however small
            # the prior variances D² get (a term shrunk to nothing)
            v = 1 / (1 / (s2[:, None] * tau2[:, None] * lam2) + 1 / c2)
            d = np.sqrt(v)
            M = eye + d[:, :, None] * S * d[:, None, :] / s2[:, None, None]
            L = np.linalg.cholesky(M)
            u = np.linalg.solve(M, (d * r / s2[:, None])[..., None])[..., 0]
            z = np.linalg.solve(np.swapaxes(L, 1, 2), rng.standard_normal((chains, p, 1)))
            beta = d * (u + z[..., 0])
            b2 = beta**2
            rss = np.maximum(q - 2 * beta @ r + np.einsum("cj,jk,ck->c", beta, S, beta), 0.0)
            shrunk = np.sum(b2 / (tau2[:, None] * lam2), axis=1)
            # floored: a target the intercepts explain exactly has no residual at all
            s2 = np.maximum(_inverse_gamma(rng, (n + p) / 2, (rss + shrunk) / 2), _TINY)
            lam2 = _inverse_gamma(rng, 1.0, 1 / nu + b2 / (2 * s2[:, None] * tau2[:, None]))
            # a scale past these bounds changes nothing (β is zero, or the slab's alone) but
            # would turn the next sweep's ratios into 0/0
            lam2 = np.clip(lam2, _TINY, _HUGE)
            nu = _inverse_gamma(rng, 1.0, 1 + 1 / lam2)
            tau2 = _inverse_gamma(rng, (p + 1) / 2, 1 / xi + np.sum(b2 / lam2, axis=1) / (2 * s2))
            tau2 = np.clip(tau2, _TINY, _HUGE)
            xi = _inverse_gamma(rng, 1.0, 1 / tau0**2 + 1 / tau2)
            kept = step - warmup
            if kept >= 0 and kept % thin == thin - 1:
                i = kept // thin
                out_beta[:, i], out_s2[:, i], out_tau2[:, i] = beta, s2, tau2
    return {"beta": out_beta, "sigma": np.sqrt(out_s2), "tau": np.sqrt(out_tau2)}
