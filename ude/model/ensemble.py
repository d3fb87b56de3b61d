"""An ensemble of independent hybrid models, solved together in one batched solve.

``build_hybrid(..., ensemble=N)`` builds N HybridODEs (each with its own freshly drawn network
weights; member 0 is the model ``ensemble=1`` would give) and stacks every learned tensor
(networks, learned parameters, initial states, noise levels) along a leading member axis.
One ODE solve then advances all members and all conditions at once: the state batch is
``(member * condition, state)``, member-major. On a GPU that is one set of kernels for N
models instead of N; the members stay independent (each one's loss and gradient involve its
own tensors only), so training the ensemble is training N models from N initialisations:
multi-start training, or the spread of an ensemble for a band.

Each member is evaluated by the HybridODE's own code (``torch.func.functional_call`` over the
member's tensors, vectorised by ``torch.func.vmap``), so the ensemble follows whatever the
HybridODE computes. On rodas5p the compiled kernels solve each row (member, condition) on its
own steps with its member's networks (:meth:`HybridEnsemble.numeric_rhs`), as the member alone
would be solved.

Shapes: the methods that the training module shares with HybridODE (``simulate``, ``observe``,
``context``, ``known_terms``, ``neural_terms``) take and give the member axis folded into the
batch, ``(member * batch, ...)``; :meth:`HybridEnsemble.trajectories` gives
``(member, condition, time, state)``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from ude.errors import UdeError
from ude.model.hybrid import HybridODE
from ude.model.numeric_rhs import (
    Members,
    NumericRHS,
    NumericSystem,
    NumpyNetwork,
    UnsupportedNetwork,
)


class _Method(nn.Module):
    """``forward(name, *args)`` calls ``hybrid.<name>(*args)``: functional_call calls a
    module's forward, and the ensemble needs the HybridODE's other methods."""

    def __init__(self, hybrid: HybridODE):
        super().__init__()
        self.hybrid = hybrid

    def forward(self, name: str, *args):
        h = self.hybrid
        if name == "rhs":
            y, context = args
            return h.known_terms(y, context) + h.neural_terms(y, context)
        if name == "prior_nll":
            return h.prior_nll()
        return getattr(h, name)(*args)


class _MemberParameters:
    """What the training reads as ``model.parameters_``: the stacked learned spec parameters
    and their prior (with the initial states', :meth:`HybridODE.prior_nll`) summed over the
    members."""

    def __init__(self, ensemble: HybridEnsemble):
        self._ensemble = ensemble

    def parameters(self) -> list[nn.Parameter]:
        return self._ensemble._stacked_group("parameters_.")

    def prior_nll(self) -> torch.Tensor:
        return self._ensemble._each("prior_nll").sum()


def _key(name: str) -> str:
    return name.replace(".", "__")


class HybridEnsemble(nn.Module):
    """``n_members`` independent HybridODEs of one spec, stacked for one batched solve.

    Args:
        members: HybridODEs built alike (the same spec, data and sizes); their learned tensors
            become the members' starting values. The first is kept as the template whose
            code evaluates every member.
    """

    def __init__(self, members: Sequence[HybridODE]):
        super().__init__()
        if len(members) < 2:
            raise UdeError(
                f"an ensemble needs 2 or more members, got {len(members)}",
                source="model.ensemble",
            )
        base = members[0]
        if base.has_noise_models:
            raise UdeError(
                "ensembles of models with noise models of their own (PEtab) are not supported",
                source="model.ensemble",
                fix="model.ensemble=1",
            )
        # The template is no submodule: its parameters are placeholders that functional_call
        # replaces by a member's; its buffers (scales, inputs) follow the ensemble's device
        # through _apply.
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_method", _Method(base))
        self.n_members = len(members)
        self._names = [name for name, _ in base.named_parameters()]
        self.networks = nn.ParameterDict()
        self.learned = nn.ParameterDict()
        for name, p in base.named_parameters():
            values = [dict(m.named_parameters())[name].detach() for m in members]
            stacked = nn.Parameter(torch.stack(values), requires_grad=p.requires_grad)
            group = self.networks if name.startswith("networks.") else self.learned
            group[_key(name)] = stacked
        self.parameters_ = _MemberParameters(self)
        self._context: torch.Tensor | None = None

    # -- what the training reads as it reads a HybridODE's --------------------------------------
    spec = property(lambda self: self._base.spec)
    solver = property(lambda self: self._base.solver)
    observable_names = property(lambda self: self._base.observable_names)
    has_noise_models = property(lambda self: False)
    inputs = property(lambda self: self._base.inputs)
    state_scale = property(lambda self: self._base.state_scale)
    deriv_scale = property(lambda self: self._base.deriv_scale)
    initial_known = property(lambda self: self._base.initial_known)
    n_states = property(lambda self: self._base.n_states)

    @property
    def initial(self) -> nn.Parameter:
        """Initial states ``(member, condition, state)``."""
        return self.learned[_key("initial")]

    @property
    def noise(self) -> torch.Tensor:
        """Noise levels ``(member, observable)``."""
        return torch.exp(self.learned[_key("log_noise")])

    def prior_nll(self) -> torch.Tensor:
        """The members' prior NLL summed (:meth:`HybridODE.prior_nll`)."""
        return self.parameters_.prior_nll()

    def _apply(self, fn, recurse=True):
        self._base._apply(fn)
        return super()._apply(fn, recurse)

    def _stacked(self) -> dict[str, torch.Tensor]:
        """Every learned tensor ``(member, ...)`` by its name in the template, as
        functional_call wants it."""
        groups = {**self.networks, **self.learned}
        return {f"hybrid.{name}": groups[_key(name)] for name in self._names}

    def _stacked_group(self, prefix: str) -> list[nn.Parameter]:
        groups = {**self.networks, **self.learned}
        return [groups[_key(n)] for n in self._names if n.startswith(prefix)]

    def _each(self, name: str, *args: torch.Tensor, dims: tuple = ()) -> torch.Tensor:
        """``hybrid.<name>(*args)`` for every member: ``(member, ...)``; ``dims`` says which
        arguments have a member axis (0) and which are shared (None)."""

        def one(params, *a):
            return functional_call(self._method, params, (name, *a))

        return vmap(one, in_dims=(0, *dims))(self._stacked(), *args)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.n_members, -1, *x.shape[1:])

    # -- pieces of the right-hand side, the member axis folded into the batch -------------------
    def context(self, condition: torch.Tensor) -> torch.Tensor:
        """Each member's inputs and parameter values ``(member * batch, input + parameter)``."""
        return self._each("context", condition, dims=(None,)).flatten(0, 1)

    def known_terms(self, y: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Known terms ``(member * batch, state)``."""
        out = self._each("known_terms", self._split(y), self._split(context), dims=(0, 0))
        return out.flatten(0, 1)

    def neural_terms(self, y: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Each member's network outputs ``(member * batch, state)``."""
        out = self._each("neural_terms", self._split(y), self._split(context), dims=(0, 0))
        return out.flatten(0, 1)

    def numeric_rhs(self) -> NumericSystem | None:
        """The current solve's right-hand side for the compiled stiff solver: the known part
        over every row's context and each member's networks on its rows
        (:class:`~ude.model.numeric_rhs.Members`); None for networks without a numpy form."""
        ctx, base = self._context, self._base
        if ctx is None:
            return None
        stacked = self._stacked()
        networks, slices = [], []
        try:
            for m in range(self.n_members):
                nets, pairs = [], []
                for k, (net, idx_in, idx_out) in enumerate(
                    zip(base.networks, base._slot_inputs, base._slot_targets, strict=True)
                ):
                    names = [name for name, _ in net.named_parameters(prefix=f"networks.{k}")]
                    tensors = [stacked[f"hybrid.{name}"] for name in names]
                    member = [t[m] for t in tensors]
                    layers = list(zip(member[0::2], member[1::2], strict=True))
                    nets.append((NumpyNetwork(net, layers), list(idx_in), list(idx_out)))
                    pairs += list(zip(tensors, member, strict=True))
                networks.append(nets)
                slices.append(pairs)
        except UnsupportedNetwork:
            return None
        known = NumericRHS.from_model(base, ctx, networks=[])
        params = [p for p in self.networks.values() if p.requires_grad]
        members = Members(networks, ctx.shape[0] // self.n_members, slices)
        return NumericSystem(known, ctx, params, self._rhs_rows, members)

    def _rhs_rows(self, y: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self._each("rhs", self._split(y), self._split(context), dims=(0, 0)).flatten(0, 1)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx = self._context
        return self._each("rhs", self._split(y), self._split(ctx), dims=(0, 0)).flatten(0, 1)

    # -- solving and observing ------------------------------------------------------------------
    def simulate(
        self, times: torch.Tensor, condition: torch.Tensor, y0: torch.Tensor | None = None
    ) -> torch.Tensor:
        """States ``(member * batch, time, state)`` at ``times`` for the batch's
        ``condition`` indices, every member in one solve."""
        ctx = self.context(condition)
        if y0 is None:
            y0 = self.initial[:, condition]
            y0 = torch.where(self.initial_known[condition], y0.detach(), y0).flatten(0, 1)
        self._context = ctx
        try:
            return self.solver(self, y0, times).transpose(0, 1)
        finally:
            self._context = None

    def trajectories(self, times: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """States ``(member, batch, time, state)``."""
        return self._split(self.simulate(times, condition))

    def observe(self, states: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Observables ``(member * batch, time, observable)`` from states
        ``(member * batch, time, state)``."""
        out = self._each("observe", self._split(states), condition, dims=(0, None))
        return out.flatten(0, 1)

    # -- members as models of their own ----------------------------------------------------------
    def member(self, index: int) -> HybridODE:
        """Member ``index`` as a HybridODE of its own (a copy)."""
        model = copy.deepcopy(self._base)
        stacked = self._stacked()
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(stacked[f"hybrid.{name}"][index])
        return model

    @torch.no_grad()
    def member_errors(self, times: torch.Tensor, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """Each member's normalised MSE ``(member,)`` on ``batch`` (``values``, ``mask``
        ``(condition, time, replicate, observable)``, ``condition``), its observables divided
        by ``scale``; inf for a member whose states are not finite."""
        cond = batch["condition"]
        pred = self._split(self.observe(self.simulate(times, cond), cond))
        resid = (batch["values"][None] - pred[:, :, :, None, :]) / batch["scale"]
        mask = batch["mask"][None].to(resid.dtype)
        mse = (resid.pow(2) * mask).sum(dim=(1, 2, 3, 4)) / mask.sum(dim=(1, 2, 3, 4)).clamp(min=1)
        return torch.where(torch.isfinite(mse), mse, torch.inf).cpu().numpy()
