"""Small MLPs for the neural slots, with input and output scaling."""

from __future__ import annotations

import torch
from torch import nn

from ude.config_check import ACTIVATION_NAMES
from ude.errors import UdeError


class RBF(nn.Module):
    """Gaussian radial activation exp(-x^2), as in the UDE paper."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-x * x)


ACTIVATIONS = dict(
    zip(ACTIVATION_NAMES, (nn.Tanh, nn.GELU, nn.SiLU, nn.Softplus, nn.ReLU, RBF), strict=True)
)


class MLP(nn.Module):
    """``(batch, n_in) -> (batch, n_out)``; inputs divided by ``in_scale``, outputs times
    ``out_scale``. The last layer starts small so the known terms dominate at first."""

    def __init__(
        self,
        n_in: int,
        n_out: int,
        hidden: int = 32,
        depth: int = 2,
        activation: str = "tanh",
        in_scale: torch.Tensor | None = None,
        out_scale: torch.Tensor | None = None,
        init_gain: float = 0.1,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise UdeError(
                f"unknown activation '{activation}'",
                source="model.activation",
                fix="one of " + ", ".join(ACTIVATIONS),
            )
        if not isinstance(hidden, int) or hidden < 1 or not isinstance(depth, int) or depth < 1:
            raise UdeError(
                f"hidden={hidden}, depth={depth}: expected positive integers",
                source="model.hidden/model.depth",
            )
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            width = hidden
        last = nn.Linear(width, n_out)
        with torch.no_grad():
            last.weight.mul_(init_gain)
            last.bias.zero_()
        layers.append(last)
        self.layers = nn.Sequential(*layers)
        self.register_buffer("in_scale", torch.ones(n_in) if in_scale is None else in_scale)
        self.register_buffer("out_scale", torch.ones(n_out) if out_scale is None else out_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x / self.in_scale) * self.out_scale


class FluxNetwork(nn.Module):
    """An MLP whose outputs are reaction fluxes, applied through a stoichiometric matrix:
    ``(batch, n_in) -> (batch, target)`` as ``fluxes(x) @ stoichiometry.T``, with
    ``stoichiometry (target, reaction)``. Whatever the fluxes, the reactions' conserved totals
    stay conserved.

    ``nonnegative (reaction,)`` marks fluxes that cannot be negative (irreversible
    reactions): ``s softplus(m / s)`` of the MLP's output ``m`` at its own scale ``s``
    (``out_scale``), so a learned synthesis never drives a species below zero.
    """

    def __init__(
        self, mlp: MLP, stoichiometry: torch.Tensor, nonnegative: torch.Tensor | None = None
    ):
        super().__init__()
        self.mlp = mlp
        self.register_buffer("stoichiometry", stoichiometry)
        self.register_buffer("nonnegative", nonnegative)

    def fluxes(self, x: torch.Tensor) -> torch.Tensor:
        """The learned fluxes ``(batch, reaction)``."""
        raw = self.mlp(x)
        if self.nonnegative is None or not bool(self.nonnegative.any()):
            return raw
        s = self.mlp.out_scale
        return torch.where(self.nonnegative, s * nn.functional.softplus(raw / s), raw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fluxes(x) @ self.stoichiometry.T


def last_layer(net: nn.Module) -> nn.Linear:
    """The linear layer that makes ``net``'s output (an MLP's, or a flux network's MLP's)."""
    return [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
