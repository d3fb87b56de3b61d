"""The LightningModule: trajectory fitting through the ODE solver, Adam then L-BFGS."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytorch_lightning as pl
import torch

from ude.errors import UdeError
from ude.model.hybrid import HybridODE
from ude.model.networks import last_layer
from ude.model.solver import SolverFailed
from ude.progress import Progress, Stage
from ude.train.losses import gaussian_nll, normalised_mse
from ude.train.warm_start import SmoothedStates, gradient_matching


class _NonFinite(RuntimeError):
    pass


FALLING = 0.05
"""A cycle still falling: its second half lowered the training MSE by more than this fraction
(yeast glycolysis from untrained networks: 21-36 % per cycle; a fit at the noise: ~1 %)."""
STALLED = 0.5
"""A fit that ends a cycle leaving more than this fraction of the data's mean square, and no
longer falling, has stalled far from the data (see :meth:`UDEModule._next_cycle`)."""
DAMPING = (0.5, 0.25, 0.125, 0.0625)
"""Factors on the network output of a warm start whose model cannot be solved."""
STEP_BACK = 0.5
"""Factor on Adam's learning rate (its schedule's too) at each step back."""


class UDEModule(pl.LightningModule):
    """Fits a :class:`HybridODE` to measurements on ``times (time,)``.

    The loss is the Gaussian NLL on measured entries (``loss='nll'``, noise learned per
    observable unless the data gives sigma) or the normalised MSE (``loss='mse'``), plus
    ``penalty`` times the mean squared (scaled) network output along the fitted trajectories,
    which leaves to the known terms what they can explain. Adam (cosine learning-rate decay)
    runs until the last ``polish_epochs`` epochs, which use L-BFGS.

    Trajectory fitting runs in cycles of the trainer's ``max_epochs``: another cycle (Adam's
    learning rate restarted, the polish moved to the end), up to ``fit_cycles`` in all, while
    a cycle ends with the fit leaving more than the fraction ``unexplained`` of the data's
    mean square (the training MSE, normalised by each observable's RMS, above it) and still
    falling (the cycle's second half lowered it by more than :data:`FALLING`): training that
    started far from the answer (no warm start, or one discarded because its model could not
    be solved) is still on its way there when a schedule tuned for a warm-started fit ends.
    A fit that takes hold, or that has stopped improving at the noise of noisy data, runs
    exactly ``max_epochs``. One that has stopped improving far from the data (more than
    :data:`STALLED` of its mean square left: Goldbeter's oscillator at 10 % noise after
    the warm start, a poor optimum more epochs of the same would not leave) runs its next
    cycle with multiple shooting in ``rescue_segments`` pieces, each from a node placed on
    the data, which fits one stretch of the series at a time (single process, one model; 0:
    never).

    Training ends on the parameters that a step started from with the best fit to all the
    training data (normalised MSE), where its last ones fit worse (:meth:`_end_on_best`;
    needs one batch an epoch, the default, and counts whole-trajectory steps only, not a
    shooting cycle's).

    A step whose loss or parameters become NaN/inf, or whose solve fails (in training or in
    the validation after it), is undone. Under Adam, the learning rate (and its schedule,
    restarts included) is then halved and training goes on from the last good parameters, up
    to ``step_backs`` times: a step too long for a stiff model (Goldbeter's with an unmeasured
    state, at epoch 10) can leave it where no solver follows, and a shorter one may not. The
    next failure, one in the L-BFGS polish, or a last epoch whose step was undone, stops
    training; ``stop_reason`` says why and the checkpoints keep the last good state.
    """

    def __init__(
        self,
        model: HybridODE,
        times: torch.Tensor,
        obs_scale: torch.Tensor,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        loss: str = "nll",
        penalty: float = 0.0,
        polish_epochs: int = 0,
        min_lr_ratio: float = 0.05,
        grad_clip: float | None = 10.0,
        warm_start_steps: int = 0,
        smoothed: SmoothedStates | None = None,
        shooting_segments: int = 1,
        shooting_epochs: int = 0,
        shooting_weight: float = 10.0,
        warm_start_lr: float = 1e-2,
        warm_start_cycles: int = 4,
        fit_cycles: int = 1,
        unexplained: float = 0.1,
        rescue_segments: int = 0,
        step_backs: int = 0,
        observed_states: torch.Tensor | None = None,
        progress: Progress | None = None,
    ):
        super().__init__()
        if loss not in {"nll", "mse"}:
            raise UdeError(f"unknown loss '{loss}'", source="optim.loss", fix="nll or mse")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise UdeError(f"expected a positive learning rate, got {lr!r}", source="optim.lr")
        if polish_epochs < 0 or penalty < 0 or weight_decay < 0:
            raise UdeError("polish_epochs, penalty and weight_decay must be >= 0", source="optim")
        self.model = model
        # an ensemble (HybridEnsemble): its members' losses add up, each member's gradient
        # is its own model's; multiple shooting and L-BFGS would tie the members together
        self.members = int(getattr(model, "n_members", 1))
        if self.members > 1 and (polish_epochs or shooting_segments > 1):
            raise UdeError(
                "an ensemble trains with Adam on whole trajectories only",
                source="model.ensemble",
                fix="optim.polish_epochs=0 optim.shooting_segments=1, or model.ensemble=1",
            )
        self.register_buffer("times", times)
        self.register_buffer("obs_scale", obs_scale)
        self.lr, self.weight_decay, self.loss_kind = float(lr), float(weight_decay), loss
        self.penalty, self.polish_epochs = float(penalty), int(polish_epochs)
        self.min_lr_ratio, self.grad_clip = float(min_lr_ratio), grad_clip
        self.warm_start_steps, self.smoothed = int(warm_start_steps), smoothed
        self.warm_start_lr, self.warm_start_cycles = float(warm_start_lr), int(warm_start_cycles)
        if self.warm_start_cycles < 1:
            raise UdeError(
                f"expected at least one warm-start cycle, got {warm_start_cycles}",
                source="optim.warm_start_cycles",
                fix="1 (one cycle of warm_start_steps) or more; optim.warm_start_steps=0 skips it",
            )
        if int(fit_cycles) < 1 or not 0 < float(unexplained) < 1:
            raise UdeError(
                f"expected fit_cycles >= 1 and 0 < unexplained < 1, got {fit_cycles} and "
                f"{unexplained}",
                source="optim.fit_cycles",
                fix="optim.fit_cycles=1 (exactly trainer.max_epochs) or more, "
                "optim.unexplained=0.1",
            )
        self.fit_cycles, self.unexplained = int(fit_cycles), float(unexplained)
        if int(rescue_segments) < 0:
            raise UdeError(
                f"expected rescue_segments >= 0, got {rescue_segments}",
                source="optim.rescue_segments",
                fix="0 (never) or the pieces of a rescue cycle's multiple shooting, e.g. 5",
            )
        self.rescue_segments = int(rescue_segments)
        if int(step_backs) < 0:
            raise UdeError(
                f"expected step_backs >= 0, got {step_backs}",
                source="optim.step_backs",
                fix="0 (a failed step stops training) or how often to halve the rate, e.g. 3",
            )
        self.step_backs = int(step_backs)
        self.step_backs_run = 0  # kept in checkpoints
        self.rescued = False  # kept in checkpoints: a resumed rescue cycle goes on shooting
        self.fit_cycles_run = 1  # kept in checkpoints: a resumed run continues its cycle
        self._cycle_epochs: int | None = None  # the trainer's max_epochs: one cycle's length
        self._halfway: float | None = None  # the MSE halfway through the cycle's Adam epochs
        # A buffer, so a resumed run (whose weights come from the checkpoint) skips it.
        self.register_buffer("warm_started", torch.tensor(False))
        self._init_shooting(int(shooting_segments), int(shooting_epochs), float(shooting_weight))
        # Measured states (condition, time, state), NaN where a state is not measured: where
        # shooting nodes start.
        self.observed_states = observed_states
        self.automatic_optimization = False
        self.stop_reason: str | None = None
        self.warm_start_discarded: str | None = None
        self.warm_start_damping: float | None = None
        self.first_mse: float | None = None
        self._last_good: dict[str, torch.Tensor] | None = None  # by name (a rescue adds nodes)
        # the best fit to all the training data (normalised MSE) seen at a step's start, its
        # epoch and parameters (by name; kept in checkpoints): training ends on them when
        # its last parameters fit worse (:meth:`_end_on_best`)
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        self.ended_on_best: dict[str, float] | None = None  # where it did, and by how much
        self._last_batch: dict[str, torch.Tensor] | None = None
        self._finished = False  # the end state is set (:meth:`finish_training`)
        self.step_back_notes: list[str] = []  # this process's (not a resumed run's) step backs
        self._undone: Exception | None = None  # the last failure undone, until a step succeeds
        # the warm start's and the training's stages (shown by the first process only)
        self.progress = progress or Progress()

    # -- losses ------------------------------------------------------------------------------
    # -- multiple shooting --------------------------------------------------------------------
    def _init_shooting(self, segments: int, epochs: int, weight: float) -> None:
        """Split the time grid into ``segments`` pieces, each solved from its own learned
        initial state (a shooting node), tied to the previous piece by a continuity penalty
        of ``weight``. Used for the first ``epochs`` epochs (0: all Adam epochs)."""
        if segments < 1 or epochs < 0 or weight < 0:
            raise UdeError(
                "shooting_segments >= 1, shooting_epochs >= 0, shooting_weight >= 0", source="optim"
            )
        self.shooting_epochs, self.shooting_weight = epochs, weight
        self._split(segments)

    def _split(self, segments: int) -> None:
        """``segments`` pieces of the time grid (at least two steps each) and, for more than
        one, their nodes (``nodes (condition, piece - 1, state)``, learned)."""
        n_times = self.times.shape[0]
        segments = min(segments, max(1, (n_times - 1) // 2))
        bounds = torch.linspace(0, n_times - 1, segments + 1).round().long().tolist()
        self.segments = list(zip(bounds[:-1], bounds[1:], strict=True))
        if segments > 1:
            n_c, n_s = self.model.initial.shape
            self.nodes = torch.nn.Parameter(self.model.initial.new_zeros(n_c, segments - 1, n_s))
            self.register_buffer("nodes_ready", torch.tensor(False, device=self.times.device))

    def _shooting(self) -> bool:
        if len(self.segments) == 1 or self._polishing():
            return False
        if self.rescued:
            return True
        return not self.shooting_epochs or self.current_epoch < self.shooting_epochs

    @torch.no_grad()
    def _place_nodes(self) -> None:
        """Start each shooting node on the model's own trajectory from the initial states."""
        cond = torch.arange(self.model.inputs.shape[0], device=self.times.device)
        try:
            states = self.model.simulate(self.times, cond)
        except SolverFailed:
            return
        starts = [s for s, _ in self.segments[1:]]
        guess = states[:, starts]
        if self.observed_states is not None:
            data = self.observed_states[:, starts].to(guess)
            guess = torch.where(torch.isfinite(data), data, guess)
        if torch.isfinite(guess).all():
            self.nodes.copy_(guess)
        self.nodes_ready.fill_(True)

    def trajectory(
        self, cond: torch.Tensor, shooting: bool = False, per_item: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """States ``(batch, time, state)`` on the data grid and, when shooting, the mean
        squared (scaled) gap between consecutive pieces (``per_item``: per batch item,
        ``(batch,)``)."""
        if not shooting:
            return self.model.simulate(self.times, cond), None
        pieces, gaps, end = [], [], None
        for k, (s, e) in enumerate(self.segments):
            start = self.model.initial[cond] if k == 0 else self.nodes[cond, k - 1]
            piece = self.model.simulate(self.times[s : e + 1], cond, y0=start)
            if end is not None:
                gaps.append((end - start) / self.model.state_scale)
            end = piece[:, -1]
            pieces.append(piece if k == 0 else piece[:, 1:])
        sq = torch.stack(gaps).pow(2)  # (gap, batch, state)
        return torch.cat(pieces, dim=1), sq.mean(dim=(0, 2)) if per_item else sq.mean()

    # -- losses ------------------------------------------------------------------------------
    def local_losses(
        self, batch: dict[str, torch.Tensor], shooting: bool = False
    ) -> dict[str, torch.Tensor]:
        """This process's part of the loss, before any averaging across processes.

        ``fit`` and ``mse`` are sums over the batch's measured entries (``entries`` of them);
        ``penalty`` and ``continuity`` sums of per-condition means over its real conditions
        (``conditions``; padding items that keep DDP processes in step count for nothing);
        ``prior`` the parameters' prior NLL (once, not per process). An ensemble's values
        are sums over its members (the sizes are those of one)."""
        cond, mask, values, sigma = (batch[k] for k in ("condition", "mask", "values", "sigma"))
        real = batch.get("real")
        real = torch.ones_like(cond, dtype=mask.dtype) if real is None else real.to(mask.dtype)
        entries, conditions = mask.sum(), real.sum()
        noise = self.model.noise
        if self.members > 1:  # every member fits the batch: (member * batch, ...)
            n = self.members
            mask, values, sigma, real = (
                x.repeat(n, *[1] * (x.dim() - 1)) for x in (mask, values, sigma, real)
            )
            noise = noise.repeat_interleave(cond.shape[0], dim=0)[:, None, None, :]
        states, gap = self.trajectory(cond, shooting, per_item=True)
        pred = self.model.observe(states, cond)
        # sums over the members of their mean errors: each member's gradient is its own
        mse = normalised_mse(pred, values, mask, self.obs_scale) * mask.sum()
        if self.loss_kind == "nll":
            sigma = torch.where(sigma > 0, sigma, noise)
            if self.model.has_noise_models:
                fit = self.model.noise_nll(states, pred, cond, values, mask, sigma)
            else:
                fit = gaussian_nll(pred, values, mask, sigma)
            fit = fit * mask.sum()
        else:
            fit = mse
        out = {
            "fit": fit,
            "mse": mse,
            "prior": self.model.prior_nll(),
            "entries": entries.to(mse.dtype),
            "conditions": conditions.to(mse.dtype),
        }
        if gap is not None:
            out["continuity"] = (gap * real).sum()
        if self.penalty > 0 and len(self.model.networks):
            flat = states.reshape(-1, states.shape[-1])
            ctx = self.model.context(cond).repeat_interleave(states.shape[1], dim=0)
            net = self.model.neural_terms(flat, ctx) / self.model.deriv_scale
            per_item = (net * net).reshape(states.shape[0], -1).mean(dim=1)
            out["penalty"] = (per_item * real).sum()
        return out

    def combine(
        self, local: dict[str, torch.Tensor], total: dict[str, torch.Tensor], processes: int = 1
    ) -> dict[str, torch.Tensor]:
        """The loss of the step from this process's ``local`` sums and the ``total`` sums over
        all ``processes``: the data's mean NLL (or MSE), plus the prior over the number of
        measured entries, the continuity and penalty terms averaged over conditions.

        Each process's loss is its share scaled so that their mean (what DDP's all-reduce
        averages the gradients over) is the loss of all the data in one process: the gradient
        is the same whatever the split; one process: the plain means."""
        entries = total["entries"].clamp(min=1)
        conditions = total["conditions"].clamp(min=1)
        fit, mse = processes * local["fit"] / entries, processes * local["mse"] / entries
        # the prior counts once: each process adds its 1/processes part of it
        out = {"fit": fit, "mse": mse, "loss": fit + local["prior"] / entries}
        if "continuity" in local:
            out["continuity"] = processes * local["continuity"] / conditions
            out["loss"] = out["loss"] + self.shooting_weight * out["continuity"]
        if "penalty" in local:
            out["penalty"] = processes * local["penalty"] / conditions
            out["loss"] = out["loss"] + self.penalty * out["penalty"]
        return out

    def losses(
        self, batch: dict[str, torch.Tensor], shooting: bool = False
    ) -> dict[str, torch.Tensor]:
        """The step's losses on ``batch`` in one process: ``loss`` (what is minimised),
        ``fit`` (mean NLL or MSE), ``mse`` (normalised), and when used ``continuity`` and
        ``penalty``."""
        local = self.local_losses(batch, shooting)
        return self.combine(local, local)

    def _processes(self) -> int:
        trainer = self._trainer
        return trainer.world_size if trainer is not None else 1

    def step_losses(
        self, batch: dict[str, torch.Tensor], shooting: bool = False
    ) -> tuple[dict[str, torch.Tensor], dict[str, float], int]:
        """The losses of a training or validation step, agreed on by every process.

        Each process computes its part; one all-reduce then sums the parts' sizes, the values
        and whether the solve failed or the loss is not finite. A failure on any process raises
        :class:`_NonFinite` or :class:`SolverFailed` on all of them, before any backward pass,
        so that none is left waiting in the gradients' all-reduce. Returns this process's
        (scaled, differentiable) losses, the values of the whole step and its number of
        conditions, the same on every process."""
        processes = self._processes()
        keys = ("fit", "mse", "prior", "entries", "conditions", "continuity", "penalty")
        failure, local = None, None
        try:
            local = self.local_losses(batch, shooting)
        except SolverFailed as err:
            failure = err
        zero = self.times.new_zeros(())
        parts = [local[k].detach() if local and k in local else zero for k in keys]
        parts[2] = parts[2] / processes  # every process holds the whole prior
        loss = None if local is None else float(self.combine(local, local)["loss"].detach())
        flags = self.times.new_tensor(
            [failure is not None, loss is not None and not math.isfinite(loss)]
        )
        summed = torch.cat([torch.stack(parts), flags])
        if processes > 1:
            summed = self.trainer.strategy.reduce(summed, reduce_op="sum")
        total = dict(zip(keys, summed[: len(keys)], strict=True))
        solver_failed, not_finite = int(summed[-2].item()), int(summed[-1].item())
        where = (
            "" if processes == 1 else f" on {solver_failed or not_finite} of {processes} processes"
        )
        if failure is not None:
            raise SolverFailed(f"{failure}{where}")
        if solver_failed:
            raise SolverFailed(f"the solver failed{where}")
        if not_finite:
            raise _NonFinite(f"loss became {loss if processes == 1 else 'NaN/inf'}{where}")
        assert local is not None
        out = self.combine(local, total, processes)
        if self.members > 1:  # the values of the step: the mean over the members
            sizes = ("entries", "conditions")
            total = {k: v if k in sizes else v / self.members for k, v in total.items()}
        if processes > 1:
            # DDP all-reduces every parameter's gradient each step: one a step leaves unused
            # (the shooting nodes after the shooting epochs, the noise with loss=mse) gets a
            # zero gradient, so no process waits for it (and DDP needs no search for them)
            touch = sum(p.reshape(-1)[0] for p in self.parameters() if p.requires_grad)
            out["loss"] = out["loss"] + 0.0 * touch
        whole = self.combine({k: v for k, v in total.items() if k in local}, total)
        return out, {k: float(v) for k, v in whole.items()}, int(total["conditions"])

    def _shown_progress(self) -> Progress:
        """The progress object on the first process; one that shows nothing on the others."""
        return self.progress if self.trainer.is_global_zero else Progress()

    def on_fit_start(self) -> None:
        """The cycles a resumed run had reached; the warm start and the shooting nodes: on
        the first process only, then broadcast (under DDP every process must start from the
        same parameters)."""
        self._cycle_epochs = int(self.trainer.max_epochs)
        self.trainer.fit_loop.max_epochs = self._cycle_epochs * self.fit_cycles_run
        warm = self.warm_start_steps and self.smoothed is not None and not self.warm_started
        nodes = len(self.segments) > 1 and not self.nodes_ready
        if not (warm or nodes):
            return
        if self.trainer.is_global_zero:
            if warm:
                with self._shown_progress().stage("warm start", total=self.warm_start_steps) as s:
                    self._warm_start(s)
            if nodes:
                self._place_nodes()
        if self._processes() > 1:
            strategy = self.trainer.strategy
            state = strategy.broadcast(
                (
                    {k: v.cpu() for k, v in self.state_dict().items()},
                    getattr(self, "warm_start_loss", None),
                    self.warm_start_discarded,
                    self.warm_start_damping,
                ),
                src=0,
            )
            if not self.trainer.is_global_zero:
                self.load_state_dict(state[0])
                self.warm_start_loss, self.warm_start_discarded = state[1], state[2]
                self.warm_start_damping = state[3]

    def on_train_start(self) -> None:
        self._finished = False
        self._train_stage = self._shown_progress().start(
            "epochs", total=self.trainer.max_epochs, done=self.current_epoch
        )

    def on_train_end(self) -> None:
        self.finish_training()
        stage = getattr(self, "_train_stage", None)
        if stage is not None:
            stage.close()

    def _warm_start(self, stage: Stage | None = None) -> None:
        """Gradient matching, kept as it is when the model it gives solves over the data's
        window, else damped (:meth:`_damp_warm_start`).

        On fast kinetics (rates of 100 beside rates of 1) the smoothed derivatives' residuals
        are noisy enough to teach a network a term that blows the trajectory up (yeast
        glycolysis: a constant drain of ATP where the truth is ``-1.28 S6``); trajectory
        fitting could not take a single step from there. ``warm_start_discarded`` says why
        when neither it nor a damped form is kept (training then starts from the untrained
        networks); ``warm_start_damping`` the factor kept (None: 1, or discarded).
        """
        before = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

        def extend(cycle: int) -> None:  # one more cycle: the stage's total grows by one
            if stage is not None and stage.total is not None:
                stage.total += self.warm_start_steps
                stage.describe(f"cycle {cycle} (the last ended on a plateau)")

        result = gradient_matching(
            self.model,
            self.smoothed,
            self.warm_start_steps,
            self.warm_start_lr,
            self.weight_decay,
            step=None if stage is None else stage.advance,
            cycles=self.warm_start_cycles,
            on_cycle=extend,
        )
        self.warm_start_loss, self.warm_start_cycles_run = result.loss, result.cycles
        self.warm_started.fill_(True)
        self.warm_start_discarded = self._solve_failure()
        if self.warm_start_discarded:
            self._damp_warm_start(before)

    def _damp_warm_start(self, before: dict[str, torch.Tensor]) -> None:
        """The warm start whose model cannot be solved, with its networks' output scaled by
        the factor of :data:`DAMPING` whose trajectories fit the training data best, or the
        untrained networks (``before``) where they fit better or none solves (then
        ``warm_start_discarded`` stays). A line search from the untrained networks' output
        (about zero: the known terms alone) towards the warm start's: on yeast glycolysis the
        halved warm start's loss is 16 where the untrained networks' is 264."""
        losses = self._training_losses()
        if losses is None:  # no training data at hand (no trainer): discarded, as it was
            self.model.load_state_dict(before)
            return
        warm = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        tried: dict[float, float] = {}
        for factor in DAMPING:
            self.model.load_state_dict(warm)
            self._scale_network_output(factor)
            tried[factor] = losses()
        self.model.load_state_dict(before)
        untrained = losses()
        best = min(tried, key=tried.__getitem__)
        if not tried[best] < untrained:
            return
        self.model.load_state_dict(warm)
        self._scale_network_output(best)
        self.warm_start_damping = best
        self.warm_start_discarded = None

    @torch.no_grad()
    def _scale_network_output(self, factor: float) -> None:
        """Every network's last layer (weights and bias) times ``factor``: its output times
        ``factor``, but for a nonnegative flux, whose softplus it moves towards ``s log 2``."""
        for net in self.model.networks:
            last = last_layer(net)
            last.weight.mul_(factor)
            last.bias.mul_(factor)

    def _training_losses(self) -> Callable[[], float] | None:
        """A function giving the loss over this process's training batches as the model
        stands (inf where it cannot be solved); None without a trainer's datamodule."""
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if datamodule is None:
            return None
        batches = [
            {k: v.to(self.times.device) for k, v in batch.items()}
            for batch in datamodule.train_dataloader()
        ]

        @torch.no_grad()
        def losses() -> float:
            total = 0.0
            for batch in batches:
                try:
                    loss = float(self.losses(batch)["loss"])
                except SolverFailed:
                    return math.inf
                total += loss if math.isfinite(loss) else math.inf
            return total

        return losses

    @torch.no_grad()
    def _solve_failure(self) -> str | None:
        """Why the model's trajectories over the data's times cannot be solved, or None."""
        conditions = torch.arange(self.model.inputs.shape[0], device=self.times.device)
        try:
            states = self.model.simulate(self.times, conditions)
        except SolverFailed as err:
            return str(err)
        return None if torch.isfinite(states).all() else "non-finite states"

    # -- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        nets = list(self.model.networks.parameters())
        nodes = [self.nodes] if hasattr(self, "nodes") else []
        ids = {id(p) for p in nets + nodes}
        rest = [p for p in self.parameters() if id(p) not in ids and p.requires_grad]
        groups = [
            {"params": nets, "weight_decay": self.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ]
        # the shooting nodes last: a rescue cycle adds them to a running optimiser
        groups += [{"params": nodes, "weight_decay": 0.0}] if nodes else []
        adam = torch.optim.AdamW(groups, lr=self.lr)
        adam_epochs = max(self.trainer.max_epochs - self.polish_epochs, 1)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            adam, T_max=adam_epochs, eta_min=self.lr * self.min_lr_ratio
        )
        whole = [p for p in self.parameters() if p.requires_grad and all(p is not n for n in nodes)]
        lbfgs = torch.optim.LBFGS(  # the polish solves whole trajectories: no nodes
            whole,
            lr=1.0,
            max_iter=20,
            history_size=50,
            line_search_fn="strong_wolfe",
        )
        return [adam, lbfgs], [schedule]

    def _polishing(self) -> bool:
        return self.current_epoch >= self.trainer.max_epochs - self.polish_epochs

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        adam, lbfgs = self.optimizers()
        self._last_batch = batch
        current = {k: p.detach().clone() for k, p in self.named_parameters()}
        try:
            if self._polishing():
                record: dict[str, float] = {}

                def closure():
                    lbfgs.zero_grad()
                    out, whole, n = self.step_losses(batch)
                    if not record:  # these parameters gave a finite loss: the last good state
                        self._last_good = current
                        self._remember(whole["mse"], current)
                    self.manual_backward(out["loss"])
                    record.update(whole, conditions=n)
                    # the loss of all the data, the same on every process: L-BFGS's line
                    # search takes the same decisions everywhere
                    return out["loss"].new_tensor(whole["loss"])

                lbfgs.step(closure=closure)
                whole = dict(record)
                n = int(whole.pop("conditions"))
            else:
                shooting = self._shooting()
                out, whole, n = self.step_losses(batch, shooting=shooting)
                self._last_good = current
                if not shooting:  # a shooting step's loss is not the whole trajectories'
                    self._remember(whole["mse"], current)
                adam.zero_grad()
                self.manual_backward(out["loss"])
                if self.grad_clip and self.members > 1:
                    self._clip_members()
                elif self.grad_clip:
                    self.clip_gradients(
                        adam, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm"
                    )
                adam.step()
            # the same on every process: they hold the same parameters
            if not all(torch.isfinite(p).all() for p in self.parameters()):
                raise _NonFinite("parameters became NaN/inf")
        except (_NonFinite, SolverFailed) as err:
            self._failed(err)
            return
        self._undone = None
        if self.first_mse is None:
            self.first_mse = whole["mse"]
        self._log_epoch("train/", whole, n)
        self._log_epoch("", {"lr": adam.param_groups[0]["lr"]}, n)

    def _remember(self, mse: float, state: dict[str, torch.Tensor]) -> None:
        """Keep ``state``, the parameters at a step's start, when their normalised MSE on all
        the training data is the lowest yet. A step that sees part of the data (more than one
        batch an epoch, or a curriculum's window: ``data.curriculum_epochs``) is not
        comparable: then nothing is kept.

        The MSE, not the objective: with the noise learned (``loss='nll'``) and priors on the
        parameters, the objective can be lowest where the fit is far worse (lynx and hare: 2.95
        at epoch 264, with a normalised MSE of 0.127, against 3.05 and 0.0045 at the end); the
        MSE is what the run reports (``train_nmse``) and what the early stopping watches."""
        window = getattr(self.trainer.datamodule, "window", None)
        if (
            self.trainer.num_training_batches != 1
            or (window is not None and window() is not None)
            or not math.isfinite(mse)
        ):
            return
        if self.best is None or mse < self.best[0]:
            self.best = (mse, int(self.current_epoch), state)

    def finish_training(self) -> None:
        """The state training ends in, set once a run (the checkpoint callback calls it before
        it saves that state; callbacks' on_train_end runs before the module's): after a last
        step undone, the parameters before it; then the best ones where those fit worse
        (:meth:`_end_on_best`)."""
        if self._finished:
            return
        self._finished = True
        if self._undone is not None and self.stop_reason is None:
            # no step succeeded after the last one undone: the run ends on a failure
            self._stop(self._undone)
        self._end_on_best()

    @torch.no_grad()
    def _end_on_best(self) -> None:
        """Training ends on the best parameters it saw (:meth:`_remember`) where its last
        ones fit the training data worse (or cannot be solved): on a stiff oscillator a step
        can throw the fit from a trajectory in phase with the data to one out of it, and the
        run can end there (the benchmark's Goldbeter cell with 4 conditions: the fit's
        normalised MSE 0.593 at epoch 93, 5.22 when the early stopping ended it at epoch 175);
        a rescue cycle's pieces can join into whole trajectories worse than the ones it
        started from.
        ``ended_on_best`` says which epoch's parameters were kept and both MSEs."""
        batch = self._last_batch
        if self.best is None or batch is None:
            return
        try:
            _, whole, _ = self.step_losses(batch)
            last = whole["mse"]
        except (_NonFinite, SolverFailed):
            last = math.inf
        best, epoch, state = self.best
        if not last > best:
            return
        for k, p in self.named_parameters():
            if k in state:
                p.copy_(state[k])
        self.ended_on_best = {"epoch": epoch, "mse": best, "last_mse": last}

    @torch.no_grad()
    def _clip_members(self) -> None:
        """Clip each member's gradient to norm ``grad_clip`` on its own (every parameter of
        an ensemble has the member axis first), as each model alone would be clipped."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        norms = torch.stack([g.reshape(self.members, -1).pow(2).sum(1) for g in grads]).sum(0)
        scale = (self.grad_clip / (norms.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.reshape(-1, *[1] * (g.dim() - 1)))

    def _log_epoch(self, prefix: str, values: dict[str, float], conditions: int) -> None:
        """Epoch means (over steps, weighted by their ``conditions``) of values that every
        process holds alike (the whole step's): sync_dist only tells Lightning so (the mean of
        equal values is the value)."""
        for key, value in values.items():
            self.log(
                prefix + key,
                value,
                on_step=False,
                on_epoch=True,
                batch_size=max(conditions, 1),
                sync_dist=True,
            )

    def _restore_last_good(self) -> None:
        if self._last_good is not None:
            with torch.no_grad():
                for k, p in self.named_parameters():
                    if k in self._last_good:
                        p.copy_(self._last_good[k])

    def _failed(self, err: Exception) -> None:
        """A step (or the validation after it) failed: step back while Adam runs and step
        backs are left, else stop."""
        if self._polishing() or self.step_backs_run >= self.step_backs or self.trainer.should_stop:
            self._stop(err)
        else:
            self._step_back(err)

    def _step_back(self, err: Exception) -> None:
        """Restore the last parameters that gave a finite loss and halve Adam's learning rate,
        now and in the rest of its schedule (the cosine decay's start and floor, which later
        cycles restart from)."""
        self._restore_last_good()
        self.step_backs_run += 1
        schedule = self.lr_schedulers()
        for group in schedule.optimizer.param_groups:
            group["lr"] *= STEP_BACK
        schedule.base_lrs = [lr * STEP_BACK for lr in schedule.base_lrs]
        schedule.eta_min *= STEP_BACK
        self.step_back_notes.append(f"epoch {self.current_epoch}: {err}")
        self._undone = err

    def _stop(self, err: Exception) -> None:
        """Restore the last parameters that gave a finite loss and stop training."""
        self._restore_last_good()
        self.stop_reason = (
            f"training stopped at epoch {self.current_epoch}: {err}; the parameters of the "
            "last step with a finite loss are kept"
        )
        self.trainer.should_stop = True

    def on_train_epoch_end(self) -> None:
        if not self._polishing() and self.stop_reason is None:
            self.lr_schedulers().step()
            self._next_cycle()
        stage = getattr(self, "_train_stage", None)
        if stage is not None:
            loss = self.trainer.callback_metrics.get("train/loss")
            stage.advance(note=None if loss is None else f"loss {float(loss):.4g}")

    def _next_cycle(self) -> None:
        """At the end of a cycle's Adam epochs, another cycle when the fit still leaves more
        than ``unexplained`` of the data's mean square and is still falling (see the class
        docstring; the MSE halfway through the cycle is kept for it): the loop
        runs ``max_epochs`` more, Adam's learning rate restarts its cosine decay and the
        polish moves to the new end. Every process decides alike (the MSE is all the data's)."""
        if self._cycle_epochs is None or self.fit_cycles_run >= self.fit_cycles:
            return
        end = self.trainer.max_epochs - self.polish_epochs  # this cycle's Adam epochs end
        adam = self._cycle_epochs - self.polish_epochs
        mse = self.trainer.callback_metrics.get("train/mse")
        mse = None if mse is None else float(mse)
        if self.current_epoch + 1 == end - adam + max(adam // 2, 1):
            self._halfway = mse
        if self.current_epoch + 1 != end or mse is None or self.trainer.should_stop:
            return
        halfway, self._halfway = self._halfway, None
        falling = halfway is not None and mse < (1 - FALLING) * halfway
        rescue = not falling and mse > STALLED and self._can_rescue()
        if not (rescue or (mse > self.unexplained and falling)):
            return
        if rescue:
            self._start_rescue()
        self.fit_cycles_run += 1
        self.trainer.fit_loop.max_epochs += self._cycle_epochs
        schedule = self.lr_schedulers()
        for group, start in zip(schedule.optimizer.param_groups, schedule.base_lrs, strict=True):
            group["lr"] = start
        schedule.last_epoch = 0
        stage = getattr(self, "_train_stage", None)
        if stage is not None and stage.total is not None:
            stage.total += self._cycle_epochs
            stage.describe(
                f"cycle {self.fit_cycles_run} (the fit left {mse:.3g} of the data's mean square"
                + (f"; multiple shooting in {len(self.segments)} pieces)" if rescue else ")")
            )

    def _can_rescue(self) -> bool:
        """A rescue cycle is possible: asked for, not run yet, not shooting already, one
        process (the nodes would be a parameter DDP does not know) and one model."""
        return (
            self.rescue_segments > 1
            and not self.rescued
            and len(self.segments) == 1
            and self.members == 1
            and self._processes() == 1
            and self.observed_states is not None
        )

    def _start_rescue(self) -> None:
        """Multiple shooting from now on: the pieces, their nodes on the data (where measured,
        else on the model's trajectory), and the nodes in the optimiser and its schedule."""
        self.rescued = True
        self._split(self.rescue_segments)
        self._place_nodes()
        adam = self.optimizers()[0]
        adam = getattr(adam, "optimizer", adam)  # Lightning's wrapper
        lr = self.lr * STEP_BACK**self.step_backs_run  # the rate as the step backs left it
        adam.add_param_group({"params": [self.nodes], "weight_decay": 0.0, "initial_lr": lr})
        self.lr_schedulers().base_lrs.append(lr)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        try:
            _, whole, n = self.step_losses(batch)
            mse, fit = whole["mse"], whole["fit"]
        except (_NonFinite, SolverFailed) as err:
            # every process gets here together: step_losses agrees on failures
            if not self.trainer.sanity_checking:
                self._failed(err)
            mse, fit, n = math.inf, math.inf, 1
        self._log_epoch("val/", {"mse": mse, "fit": fit}, n)

    # -- state kept across resumes -----------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ude_first_mse"] = self.first_mse
        checkpoint["ude_fit_cycles"] = self.fit_cycles_run
        checkpoint["ude_rescued"] = len(self.segments) if self.rescued else 0  # its pieces
        checkpoint["ude_cycle_halfway"] = self._halfway
        checkpoint["ude_step_backs"] = self.step_backs_run
        if self.best is not None:
            mse, epoch, state = self.best
            checkpoint["ude_best"] = (mse, epoch, {k: v.cpu() for k, v in state.items()})

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.first_mse = checkpoint.get("ude_first_mse")
        self.fit_cycles_run = int(checkpoint.get("ude_fit_cycles", 1))
        self._halfway = checkpoint.get("ude_cycle_halfway")
        self.step_backs_run = int(checkpoint.get("ude_step_backs", 0))
        if checkpoint.get("ude_best") is not None:
            mse, epoch, state = checkpoint["ude_best"]
            self.best = (mse, epoch, {k: v.to(self.times.device) for k, v in state.items()})
        self.restore_rescue(checkpoint)

    def restore_rescue(self, checkpoint: dict) -> None:
        """A checkpoint written in a rescue cycle: the nodes it holds exist here too, before
        the weights (and the optimiser's state) are loaded."""
        if checkpoint.get("ude_rescued") and not self.rescued:
            self.rescued = True
            self._split(int(checkpoint["ude_rescued"]))
