"""Bayesian sparse regression of the distilled terms: a regularised horseshoe prior over each
target's library coefficients, the likelihood on the integral-matching system, NUTS.

For each network target the screen's linear system (:class:`ude.distill.integral.
IntegralProblem`) reads ``y (point,) ≈ a[condition] + F (point, term) w``. The intercepts
``a`` (one per condition: the initial state) get a flat prior and are integrated out exactly
by projecting ``y`` and ``F`` on the complement of the condition dummies; the columns and
``y`` are then standardised, so the coefficients ``β`` are in units of the unexplained
signal's spread. The prior is the regularised horseshoe (Piironen & Vehtari 2017, Electron.
J. Stat. 11:5018):

    σ ~ HalfNormal(1),   τ ~ HalfCauchy(τ0),   τ0 = p0 / (p - p0) · σ / √n,
    λ_j ~ HalfCauchy(1), c² ~ InvGamma(ν/2, ν s²/2),
    β_j ~ Normal(0, τ λ̃_j),  λ̃_j² = c² λ_j² / (c² + τ² λ_j²),
    y ~ Normal(F β, σ)

with ``p0`` the expected number of terms, ``s`` the slab's scale and ``ν`` its degrees of
freedom. Given the scales, ``β`` is Gaussian: NUTS samples the ``p + 3`` scales (each on its log
scale) from their density with ``β`` integrated out (a ``p × p`` Cholesky per step, from the
sufficient statistics ``XᵀX``, ``Xᵀy``), and each draw's ``β`` is drawn from its exact
conditional. Without this the horseshoe's funnel between ``β`` and its scale forces NUTS
into its deepest trees, at over ten times the cost (measured on the default example).

Why pyro (and not numpyro): pyro is torch-native, as the rest of ude is; its NUTS takes a
torch potential function directly, so the density above is written once in torch and no
second array library (JAX, with its own compilation and device handling) enters the
install. Its overhead per step is higher than numpyro's; for the few tens of entries here
that is seconds, which the cost target allows.

The columns of a free rate law (Michaelis-Menten ``K``, Hill ``K`` and ``n``) are taken at
the constants the screen fitted for the term alone; terms the screen left out as degenerate
(:attr:`IntegralProblem.degenerate`) are left out here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ude.distill.integral import IntegralProblem
from ude.errors import UdeError


@dataclass
class TermPosterior:
    """The posterior of one target's library coefficients.

    ``terms (term,)``: the library terms kept (names at the screen's constants); ``draws
    (chain, sample, term)``: plain coefficients ``w`` (the unit of ``y`` per unit of the
    term's integral); ``standardised (chain, sample, term)``: ``β``; ``rhat``, ``ess``:
    split R-hat and effective sample size of each term's ``β`` and of ``σ`` and ``τ``
    (keys ``term``, ``sigma``, ``tau``); ``left_out``: degenerate terms not sampled;
    ``from_data``: whether ``y`` holds measurements (else the UDE trajectory's own part).
    """

    target: str
    terms: list[str]
    draws: np.ndarray
    standardised: np.ndarray
    rhat: dict[str, float]
    ess: dict[str, float]
    threshold: float
    level: float
    n_points: int
    from_data: bool
    left_out: list[str] = field(default_factory=list)
    seconds: float = 0.0
    divergences: int = 0

    @property
    def n_draws(self) -> int:
        return self.draws.shape[0] * self.draws.shape[1]

    def inclusion(self) -> dict[str, float]:
        """``{term: P(|β| > threshold)}``: the posterior probability that the term carries
        more than ``threshold`` of the unexplained signal's spread."""
        flat = np.abs(self.standardised.reshape(-1, len(self.terms)))
        p = np.mean(flat > self.threshold, axis=0)
        return {t: float(v) for t, v in zip(self.terms, p, strict=True)}

    def intervals(self) -> dict[str, list[float]]:
        """``{term: [lo, hi]}``: central ``level`` credible intervals of the plain
        coefficients."""
        flat = self.draws.reshape(-1, len(self.terms))
        q = np.quantile(flat, [(1 - self.level) / 2, (1 + self.level) / 2], axis=0)
        return {t: [float(q[0, j]), float(q[1, j])] for j, t in enumerate(self.terms)}

    def medians(self) -> dict[str, float]:
        flat = self.draws.reshape(-1, len(self.terms))
        return {t: float(v) for t, v in zip(self.terms, np.median(flat, axis=0), strict=True)}

    @property
    def max_rhat(self) -> float:
        """The worst R-hat of what is reported: the coefficients and ``σ``. The global scale
        ``τ`` mixes slowest in any horseshoe and moves the coefficients little once the data
        pin them; it is reported on its own (``tau_rhat``)."""
        return max(v for k, v in self.rhat.items() if k != "tau")

    @property
    def min_ess(self) -> float:
        return min(v for k, v in self.ess.items() if k != "tau")

    def summary(self) -> dict[str, Any]:
        """distill.json's entry for this target."""
        incl, ci, med = self.inclusion(), self.intervals(), self.medians()
        return {
            "from_data": self.from_data,
            "n_points": self.n_points,
            "n_draws": self.n_draws,
            "divergences": self.divergences,
            "max_rhat": round(self.max_rhat, 4),
            "min_ess": round(self.min_ess, 1),
            "tau_rhat": round(self.rhat["tau"], 4),
            "tau_ess": round(self.ess["tau"], 1),
            "seconds": round(self.seconds, 2),
            "left_out_degenerate": self.left_out,
            "terms": {
                t: {
                    "inclusion": round(incl[t], 4),
                    "median": med[t],
                    "interval": ci[t],
                    "rhat": round(self.rhat[t], 4),
                    "ess": round(self.ess[t], 1),
                }
                for t in sorted(self.terms, key=lambda t: -incl[t])
            },
        }


def _design(p: IntegralProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, list[int]]:
    """The standardised system with the intercepts projected out: ``X (point, kept term)``,
    ``y (point,)``, the plain scale of each kept column ``(kept term,)``, ``y``'s scale and
    the kept term indices."""
    Q, _ = np.linalg.qr(p.dummies)

    def residual(a: np.ndarray) -> np.ndarray:
        return a - Q @ (Q.T @ a)

    y = residual(p.y)
    F = residual(p.F)
    scale = np.sqrt(np.mean(F**2, axis=0))
    kept = [
        j
        for j in range(p.n_terms)
        if j not in p.degenerate and scale[j] > 1e-12 * max(scale.max(), 1e-300)
    ]
    y_scale = float(np.std(y)) or 1.0
    return F[:, kept] / scale[kept], y / y_scale, scale[kept], y_scale, kept


class HorseshoeRegression:
    """Regularised-horseshoe regression of each target's integral-matching system, sampled by
    NUTS (pyro), several chains for R-hat.

    Args:
        num_samples: draws per chain kept.
        warmup: adaptation steps per chain.
        chains: independent chains (run one after another: at least 2 for R-hat).
        expected_terms: ``p0``, the prior's expected number of terms per target.
        slab_scale: ``s``, the largest plausible ``|β|`` (standardised units).
        slab_df: ``ν``, the slab's degrees of freedom.
        threshold: ``|β|`` above which a term counts as included (fraction of the
            unexplained signal's spread it carries).
        level: the credible intervals' probability.
        max_tree_depth: NUTS tree depth (2**depth steps per draw at most).
        seed: seeds the chains (torch's global generator is restored afterwards).
    """

    def __init__(
        self,
        num_samples: int = 200,
        warmup: int = 200,
        chains: int = 2,
        expected_terms: float = 1.0,
        slab_scale: float = 2.0,
        slab_df: float = 4.0,
        threshold: float = 0.05,
        level: float = 0.95,
        max_tree_depth: int = 6,
        seed: int = 0,
    ):
        if num_samples < 4 or warmup < 0 or chains < 1 or not 0 < level < 1:
            raise UdeError(
                f"num_samples={num_samples}, warmup={warmup}, chains={chains}, level={level}",
                source="distill.uq",
                fix="num_samples at least 4, chains at least 1, level in (0, 1)",
            )
        self.num_samples = num_samples
        self.warmup = warmup
        self.chains = chains
        self.expected_terms = expected_terms
        self.slab_scale = slab_scale
        self.slab_df = slab_df
        self.threshold = threshold
        self.level = level
        self.max_tree_depth = max_tree_depth
        self.seed = seed

    def fit(self, problem: IntegralProblem, target: str = "") -> TermPosterior:
        """The posterior of ``problem``'s coefficients."""
        import time

        t0 = time.perf_counter()
        X, y, scale, y_scale, kept = _design(problem)
        names = [problem.terms[j] for j in kept]
        left_out = [problem.terms[j] for j in sorted(problem.degenerate)]
        if not kept:
            raise UdeError(
                f"target {target}: no library term is left to sample",
                source="distill.uq",
                fix="widen the library (distill.library)",
            )
        from threadpoolctl import threadpool_limits

        chains, divergences = [], 0
        # one BLAS thread: on p × p matrices threads cost fifty times what they save
        with torch.random.fork_rng(devices=[]), threadpool_limits(1):
            for k in range(self.chains):
                draws, div = self._chain(X, y, self.seed * 1000 + k)
                chains.append(draws)
                divergences += div
        beta = np.stack([c["beta"] for c in chains])
        sigma = np.stack([c["sigma"] for c in chains])
        tau = np.stack([c["tau"] for c in chains])
        rhat, ess = _diagnostics(beta, {"sigma": sigma, "tau": tau}, names)
        return TermPosterior(
            target=target,
            terms=names,
            draws=beta * y_scale / scale,
            standardised=beta,
            rhat=rhat,
            ess=ess,
            threshold=self.threshold,
            level=self.level,
            n_points=len(y),
            from_data=problem.from_data,
            left_out=left_out,
            seconds=time.perf_counter() - t0,
            divergences=divergences,
        )

    def _potential(self, X: torch.Tensor, y: torch.Tensor):
        """The negative log density of the scales with ``β`` integrated out, and a function
        that draws ``β`` from its Gaussian conditional at given scales."""
        n, p = X.shape
        p0 = min(self.expected_terms, p - 0.5)
        a, b = self.slab_df / 2, self.slab_df * self.slab_scale**2 / 2
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

    def _chain(self, X_np: np.ndarray, y_np: np.ndarray, seed: int) -> tuple[dict, int]:
        from pyro.infer.mcmc import MCMC, NUTS

        torch.manual_seed(seed)
        X = torch.as_tensor(X_np, dtype=torch.float64)
        y = torch.as_tensor(y_np, dtype=torch.float64)
        n, p = X.shape
        potential, draw_beta = self._potential(X, y)
        # start near the data: the residual spread of a ridge fit, the slab at its scale
        ridge = np.linalg.solve(X_np.T @ X_np + np.eye(p), X_np.T @ y_np)
        resid = float(np.std(y_np - X_np @ ridge))
        init = {
            "log_lam": 0.5 * torch.randn(p, dtype=torch.float64),
            "log_tau": 0.5 * torch.randn(1, dtype=torch.float64),
            "log_c2": torch.full((1,), 2 * math.log(self.slab_scale), dtype=torch.float64),
            "log_sigma": torch.full((1,), math.log(max(resid, 1e-6)), dtype=torch.float64),
        }
        kernel = NUTS(potential_fn=potential, max_tree_depth=self.max_tree_depth)
        mcmc = MCMC(
            kernel,
            num_samples=self.num_samples,
            warmup_steps=self.warmup,
            initial_params=init,
            disable_progbar=True,
        )
        mcmc.run()
        s = mcmc.get_samples()
        z = torch.randn(self.num_samples, p, dtype=torch.float64).numpy()
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


def _diagnostics(
    beta: np.ndarray, extra: dict[str, np.ndarray], names: list[str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Split R-hat and effective sample size of each term's ``β (chain, sample, term)`` and
    of each of ``extra`` ``(chain, sample)``. One chain: R-hat of its two halves."""
    from pyro.ops.stats import effective_sample_size, split_gelman_rubin

    series = {n: beta[..., j] for j, n in enumerate(names)} | extra
    rhat, ess = {}, {}
    for n, v in series.items():
        t = torch.as_tensor(v, dtype=torch.float64)
        r = float(split_gelman_rubin(t, chain_dim=0, sample_dim=1))
        e = float(effective_sample_size(t, chain_dim=0, sample_dim=1))
        # a constant series (a term pinned at zero) has no spread to judge: converged
        rhat[n] = r if math.isfinite(r) else 1.0
        ess[n] = e if math.isfinite(e) else float(t.numel())
    return rhat, ess
