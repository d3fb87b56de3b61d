"""Samples of (network input, network output) along the fitted trajectories."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ude.errors import UdeError
from ude.fit import predict_fine
from ude.model.hybrid import HybridODE


@dataclass
class Samples:
    """Network inputs and outputs at sampled states.

    Shapes: ``X (sample, state + input)`` with columns ``names`` (states then inputs);
    ``Y (sample, state)`` the summed network terms of each state (zero where none);
    ``condition (sample,)``; ``times (sample,)`` the time of the trajectory point (of its
    jittered copies too); ``on_trajectory (sample,)`` False for jittered copies; ``fluxes``
    each neural reaction's learned flux ``(sample,)``.
    """

    X: np.ndarray
    Y: np.ndarray
    names: list[str]
    states: list[str]
    condition: np.ndarray
    on_trajectory: np.ndarray
    times: np.ndarray
    fluxes: dict[str, np.ndarray] = field(default_factory=dict)

    def target(self, name: str) -> np.ndarray:
        """The network output named ``name``: a neural reaction's flux, or a state's term."""
        if name in self.fluxes:
            return self.fluxes[name]
        return self.Y[:, self.states.index(name)]

    def columns(self, names: list[str]) -> np.ndarray:
        return self.X[:, [self.names.index(n) for n in names]]


class TrajectorySampler:
    """Samples the networks along the fitted trajectories of all conditions.

    Args:
        n_times: points per condition, evenly spaced over the data's time span.
        jitter: standard deviation of the relative jitter added to each state (0: none). Kept
            small: far from the trajectories the network is arbitrary.
        n_jitter: jittered copies of each point.
        seed: seed of the jitter.
    """

    def __init__(self, n_times: int = 200, jitter: float = 0.02, n_jitter: int = 1, seed: int = 0):
        self.n_times = n_times
        self.jitter = jitter
        self.n_jitter = n_jitter
        self.seed = seed

    def sample(self, model: HybridODE, times: np.ndarray) -> Samples:
        """Samples of ``model`` over the span of ``times`` (the data's times): at ``n_times``
        even points, or at ``times`` themselves where the solver cannot land on the even
        points (a trained model close to blowing up, which training solved on the data's
        times; :func:`ude.fit.predict_fine`)."""
        if self.n_times < 2 or self.jitter < 0 or self.n_jitter < 0:
            raise UdeError(
                f"n_times={self.n_times}, jitter={self.jitter}, n_jitter={self.n_jitter}",
                source="distill.sampler",
                fix="n_times >= 2, jitter >= 0, n_jitter >= 0",
            )
        # (condition, time, state); on the data's own times where the even grid does not solve
        grid, (states, _) = predict_fine(model, np.asarray(times, dtype=float), self.n_times)
        n_c, n_t, n_s = states.shape
        flat = states.reshape(-1, n_s)
        cond = np.repeat(np.arange(n_c), n_t)
        when = np.tile(grid, n_c)
        on = np.ones(len(flat), dtype=bool)
        rng = np.random.default_rng(self.seed)
        if self.jitter > 0 and self.n_jitter > 0:
            scale = model.state_scale.detach().cpu().numpy()
            copies = [flat]
            for _ in range(self.n_jitter):
                noise = rng.standard_normal(flat.shape)
                # relative jitter, with a floor of the state's typical scale for values near 0
                size = self.jitter * np.maximum(np.abs(flat), 0.1 * scale)
                copies.append(flat + size * noise)
            flat = np.concatenate(copies)
            cond = np.tile(cond, self.n_jitter + 1)
            when = np.tile(when, self.n_jitter + 1)
            on = np.concatenate([on, np.zeros(len(flat) - len(on), dtype=bool)])
        dtype = model.initial.dtype
        device = model.initial.device
        with torch.no_grad():
            y = torch.tensor(flat, dtype=dtype, device=device)
            c = torch.tensor(cond, device=device)
            ctx = model.context(c)
            out = model.neural_terms(y, ctx).cpu().numpy()
            fluxes = {r: f.cpu().numpy() for r, f in model.fluxes(y, ctx).items()}
            inputs = ctx[:, : len(model.spec.inputs)].cpu().numpy()
        X = np.concatenate([flat, inputs], axis=1)
        return Samples(
            X=X,
            Y=out,
            names=[*model.spec.states, *model.spec.inputs],
            states=list(model.spec.states),
            condition=cond,
            on_trajectory=on,
            times=when,
            fluxes=fluxes,
        )
