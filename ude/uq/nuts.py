"""NUTS (pyro) on Piironen & Vehtari's regularised horseshoe, the published prior exactly: the
reference that :mod:`ude.uq.gibbs`'s faster variant is checked against
(``HorseshoeRegression(sampler="nuts")``).

On a standardised system ``y (point,) ≈ X (point, term) β`` (Piironen & Vehtari 2017,
Electron. J. Stat. 11:5018):

    σ ~ HalfNormal(1),   τ ~ HalfCauchy(τ0),   τ0 = p0 / (p - p0) · σ / √n,
    λ_j ~ HalfCauchy(1), c² ~ InvGamma(ν/2, ν s²/2),
    β_j ~ Normal(0, τ λ̃_j),  λ̃_j² = c² λ_j² / (c² + τ² λ_j²),
    y ~ Normal(X β, σ)

with ``p0`` the expected number of terms, ``s`` the slab's scale and ``ν`` its degrees of
freedom. Given the scales, ``β`` is Gaussian: NUTS samples the ``p + 3`` scales (each on its log
scale) from their density with ``β`` integrated out (a ``p × p`` Cholesky per step, from the
sufficient statistics ``XᵀX``, ``Xᵀy``), and each draw's ``β`` is drawn from its exact
conditional. Without this the horseshoe's funnel between ``β`` and its scale forces NUTS
into its deepest trees, at over ten times the cost.

Why pyro (and not numpyro): pyro is torch-native, as the rest of ude is; its NUTS takes a
torch potential function directly, so no second array library (JAX) enters the install. It
costs about 30 s of CPU per target on the default example (200 warm-up steps and 200 draws,
2 chains) and still left R-hat above 1.01 there, against well under a second for the Gibbs
sampler's 4 converged chains: it is kept for the prior it samples, not as the default.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def horseshoe_nuts(
    X: np.ndarray, y: np.ndarray, seed: int, **settings: Any
) -> tuple[dict[str, np.ndarray], int]:
    """Draws ``beta (chain, sample, term)``, ``sigma``, ``tau`` ``(chain, sample)`` (``tau``:
    the global scale of ``β``, ``σ`` included) and the number of divergent transitions.
    ``settings``: ``num_samples``, ``warmup``, ``chains``, ``expected_terms``, ``slab_scale``,
    ``slab_df``, ``max_tree_depth`` (:class:`ude.uq.HorseshoeRegression`'s)."""
    chains, divergences = [], 0
    with torch.random.fork_rng(devices=[]):
        for k in range(settings["chains"]):
            draws, div = _chain(X, y, seed * 1000 + k, settings)
            chains.append(draws)
            divergences += div
    return {
        key: np.stack([c[key] for c in chains]) for key in ("beta", "sigma", "tau")
    }, divergences


def _potential(
    X: torch.Tensor, y: torch.Tensor, expected_terms: float, slab_scale: float, slab_df: float
):
    """The negative log density of the scales with ``β`` integrated out, and a function
    that draws ``β`` from its Gaussian conditional at given scales."""
    n, p = X.shape
    p0 = min(expected_terms, p - 0.5)
    a, b = slab_df / 2, slab_df * slab_scale**2 / 2
    log_ratio = math.log(p0 / (p - p0) / math.sqrt(n))
    # sufficient statistics: the cost of a step does not grow with the data
    stats = _Stats(X.numpy(), y.numpy())

    def variances(v: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(…, term)`` prior variances ``τ² λ̃²`` and ``σ² (…, 1)``."""
        log_tau = log_ratio + v["log_sigma"] + v["log_tau"]
        w = (2 * (log_tau + v["log_lam"])).exp()  # τ² λ²
        c2 = v["log_c2"].exp()
        return 1 / (1 / w + 1 / c2), (2 * v["log_sigma"]).exp()

    def potential(v: dict[str, torch.Tensor]) -> torch.Tensor:
        var, s2 = variances(v)
        loglik = _CollapsedLikelihood.apply(var, s2[0], stats)
        half_cauchy = lambda w: w - torch.log1p((2 * w).exp())  # noqa: E731 - log |C(0,1)| on log scale
        logp = (
            loglik
            + half_cauchy(v["log_lam"]).sum()
            + half_cauchy(v["log_tau"]).sum()
            - a * v["log_c2"].sum()
            - b * torch.exp(-v["log_c2"]).sum()
            - 0.5 * s2.sum()
            + v["log_sigma"].sum()
        )
        return -logp

    def draw_beta(v: dict[str, torch.Tensor], z: np.ndarray):
        """``β (sample, term)`` from its conditional ``N(D A⁻¹ D r / σ², D A⁻¹ D)`` at each
        sample's scales, with ``z (sample, term)`` standard normal; ``σ``, ``τ``
        ``(sample,)``."""
        var, s2 = (t.numpy() for t in variances(v))
        out = np.empty_like(z)
        for i in range(len(z)):
            L, d, u = stats.solve(var[i], float(s2[i, 0]))
            # L⁻ᵀ z has covariance A⁻¹
            out[i] = d * (u + np.linalg.solve(L.T, z[i]))
        sigma = np.sqrt(s2[:, 0])
        tau = np.exp(log_ratio + v["log_sigma"].numpy()[:, 0] + v["log_tau"].numpy()[:, 0])
        return out, sigma, tau

    return potential, draw_beta


def _chain(
    X_np: np.ndarray, y_np: np.ndarray, seed: int, settings: dict[str, Any]
) -> tuple[dict, int]:
    from pyro.infer.mcmc import MCMC, NUTS

    torch.manual_seed(seed)
    X = torch.as_tensor(X_np, dtype=torch.float64)
    y = torch.as_tensor(y_np, dtype=torch.float64)
    n, p = X.shape
    potential, draw_beta = _potential(
        X, y, settings["expected_terms"], settings["slab_scale"], settings["slab_df"]
    )
    # start near the data: the residual spread of a ridge fit, the slab at its scale
    ridge = np.linalg.solve(X_np.T @ X_np + np.eye(p), X_np.T @ y_np)
    resid = float(np.std(y_np - X_np @ ridge))
    init = {
        "log_lam": 0.5 * torch.randn(p, dtype=torch.float64),
        "log_tau": 0.5 * torch.randn(1, dtype=torch.float64),
        "log_c2": torch.full((1,), 2 * math.log(settings["slab_scale"]), dtype=torch.float64),
        "log_sigma": torch.full((1,), math.log(max(resid, 1e-6)), dtype=torch.float64),
    }
    kernel = NUTS(potential_fn=potential, max_tree_depth=settings["max_tree_depth"])
    mcmc = MCMC(
        kernel,
        num_samples=settings["num_samples"],
        warmup_steps=settings["warmup"],
        initial_params=init,
        disable_progbar=True,
    )
    mcmc.run()
    s = mcmc.get_samples()
    z = torch.randn(settings["num_samples"], p, dtype=torch.float64).numpy()
    beta, sigma, tau = draw_beta(s, z)
    div = mcmc.diagnostics().get("divergences", {}).get("chain 0", [])
    return {"beta": beta, "sigma": sigma, "tau": tau}, len(div)


class _Stats:
    """``XᵀX``, ``Xᵀy``, ``yᵀy`` and ``n`` of a standardised system, and the linear algebra of
    the collapsed likelihood on them (numpy: a ``p × p`` problem costs microseconds, torch's
    autograd through a Cholesky over ten times more)."""

    def __init__(self, X: np.ndarray, y: np.ndarray):
        self.S, self.r, self.q, self.n = X.T @ X, X.T @ y, float(y @ y), len(y)
        self.eye = np.eye(X.shape[1])

    def solve(self, var: np.ndarray, s2: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cholesky factor of ``A = I + D S D / σ²`` (``D = diag(√var)``: eigenvalues ≥ 1
        however small the variances), ``D`` and ``u = A⁻¹ D r / σ²``."""
        d = np.sqrt(var)
        L = np.linalg.cholesky(self.eye + d[:, None] * self.S * d[None, :] / s2)
        u = _cho_solve(L, d * self.r / s2)
        return L, d, u

    def loglik(self, var: np.ndarray, s2: float) -> tuple[float, np.ndarray, float]:
        """``log N(y; 0, σ² I + X diag(var) Xᵀ)`` (without ``2π``) and its gradients by
        ``var (term,)`` and ``σ²``, by Woodbury's identity in the ``p``-space."""
        L, d, u = self.solve(var, s2)
        m = d * u  # the posterior mean of β
        logdet = self.n * np.log(s2) + 2 * float(np.log(np.diag(L)).sum())
        quad = (self.q - self.r @ m) / s2
        Sm = self.S @ m
        Xt_alpha = (self.r - Sm) / s2  # Xᵀ Σ⁻¹ y
        # diag(Xᵀ Σ⁻¹ X) = diag(S - S D A⁻¹ D S / σ²) / σ²
        B = _cho_solve(L, d[:, None] * self.S)  # A⁻¹ D S
        diag = (np.diag(self.S) - np.einsum("jk,kj->j", self.S * d[None, :], B) / s2) / s2
        g_var = 0.5 * (Xt_alpha**2 - diag)
        alpha2 = (self.q - 2 * self.r @ m + m @ Sm) / s2**2
        trace = (self.n - float(np.diag(B) @ d) / s2) / s2  # tr Σ⁻¹
        g_s2 = 0.5 * (alpha2 - trace)
        return -0.5 * (logdet + quad), g_var, g_s2


def _cho_solve(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.linalg import solve_triangular

    return solve_triangular(L.T, solve_triangular(L, b, lower=True), lower=False)


class _CollapsedLikelihood(torch.autograd.Function):
    """:meth:`_Stats.loglik` as a torch function of the prior variances ``(term,)`` and
    ``σ²`` (a scalar tensor), with its analytic gradient."""

    @staticmethod
    def forward(ctx, var: torch.Tensor, s2: torch.Tensor, stats: _Stats) -> torch.Tensor:
        var_np, s2_np = var.detach().numpy(), np.float64(s2.detach().numpy())
        with np.errstate(all="ignore"):
            try:
                value, g_var, g_s2 = stats.loglik(var_np, s2_np)
            except (np.linalg.LinAlgError, ValueError):
                # a trial point far out (the step-size search): NUTS rejects it
                value, g_var, g_s2 = -np.inf, np.zeros_like(var_np), 0.0
        ctx.save_for_backward(torch.as_tensor(g_var), torch.as_tensor(g_s2))
        return var.new_tensor(value)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g_var, g_s2 = ctx.saved_tensors
        return grad * g_var, grad * g_s2, None
