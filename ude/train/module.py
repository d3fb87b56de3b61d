"""The LightningModule: trajectory fitting through the ODE solver, Adam then L-BFGS."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch

from ude.errors import UdeError
from ude.model.hybrid import HybridODE
from ude.model.solver import SolverFailed
from ude.train.losses import gaussian_nll, normalised_mse
from ude.train.warm_start import SmoothedStates, gradient_matching


class _NonFinite(RuntimeError):
    pass


class UDEModule(pl.LightningModule):
    """Fits a :class:`HybridODE` to measurements on ``times (time,)``.

    The loss is the Gaussian NLL on measured entries (``loss='nll'``, noise learned per
    observable unless the data gives sigma) or the normalised MSE (``loss='mse'``), plus
    ``penalty`` times the mean squared (scaled) network output along the fitted trajectories,
    which leaves to the known terms what they can explain. Adam (cosine learning-rate decay)
    runs until the last ``polish_epochs`` epochs, which use L-BFGS.

    A step whose loss or parameters become NaN/inf, or whose solve fails, is undone and
    training stops; ``stop_reason`` says why and the checkpoints keep the last good state.
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
        observed_states: torch.Tensor | None = None,
    ):
        super().__init__()
        if loss not in {"nll", "mse"}:
            raise UdeError(f"unknown loss '{loss}'", source="optim.loss", fix="nll or mse")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise UdeError(f"expected a positive learning rate, got {lr!r}", source="optim.lr")
        if polish_epochs < 0 or penalty < 0 or weight_decay < 0:
            raise UdeError("polish_epochs, penalty and weight_decay must be >= 0", source="optim")
        self.model = model
        self.register_buffer("times", times)
        self.register_buffer("obs_scale", obs_scale)
        self.lr, self.weight_decay, self.loss_kind = float(lr), float(weight_decay), loss
        self.penalty, self.polish_epochs = float(penalty), int(polish_epochs)
        self.min_lr_ratio, self.grad_clip = float(min_lr_ratio), grad_clip
        self.warm_start_steps, self.smoothed = int(warm_start_steps), smoothed
        self.warm_start_lr = float(warm_start_lr)
        # A buffer, so a resumed run (whose weights come from the checkpoint) skips it.
        self.register_buffer("warm_started", torch.tensor(False))
        self._init_shooting(int(shooting_segments), int(shooting_epochs), float(shooting_weight))
        # Measured states (condition, time, state), NaN where a state is not measured: where
        # shooting nodes start.
        self.observed_states = observed_states
        self.automatic_optimization = False
        self.stop_reason: str | None = None
        self.warm_start_discarded: str | None = None
        self.first_mse: float | None = None
        self._last_good: list[torch.Tensor] | None = None

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
        n_times = self.times.shape[0]
        segments = min(segments, max(1, (n_times - 1) // 2))  # at least two steps a piece
        bounds = torch.linspace(0, n_times - 1, segments + 1).round().long().tolist()
        self.segments = list(zip(bounds[:-1], bounds[1:], strict=True))
        self.shooting_epochs, self.shooting_weight = epochs, weight
        if segments > 1:
            n_c, n_s = self.model.initial.shape
            self.nodes = torch.nn.Parameter(self.model.initial.new_zeros(n_c, segments - 1, n_s))
            self.register_buffer("nodes_ready", torch.tensor(False))

    def _shooting(self) -> bool:
        if len(self.segments) == 1 or self._polishing():
            return False
        return not self.shooting_epochs or self.current_epoch < self.shooting_epochs

    @torch.no_grad()
    def _place_nodes(self) -> None:
        """Start each shooting node on the model's own trajectory from the initial states."""
        cond = torch.arange(self.model.initial.shape[0], device=self.times.device)
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
        self, cond: torch.Tensor, shooting: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """States ``(batch, time, state)`` on the data grid and, when shooting, the mean
        squared (scaled) gap between consecutive pieces."""
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
        return torch.cat(pieces, dim=1), torch.stack(gaps).pow(2).mean()

    # -- losses ------------------------------------------------------------------------------
    def losses(
        self, batch: dict[str, torch.Tensor], shooting: bool = False
    ) -> dict[str, torch.Tensor]:
        cond = batch["condition"]
        states, gap = self.trajectory(cond, shooting)
        pred = self.model.observe(states, cond)
        mse = normalised_mse(pred, batch["values"], batch["mask"], self.obs_scale)
        if self.loss_kind == "nll":
            sigma = torch.where(batch["sigma"] > 0, batch["sigma"], self.model.noise)
            if self.model.has_noise_models:
                fit = self.model.noise_nll(
                    states, pred, cond, batch["values"], batch["mask"], sigma
                )
            else:
                fit = gaussian_nll(pred, batch["values"], batch["mask"], sigma)
        else:
            fit = mse
        # Priors on parameters count once per data set, so they are divided by the number of
        # measured entries that the mean NLL averages over.
        prior = self.model.parameters_.prior_nll() / batch["mask"].sum().clamp(min=1)
        out = {"fit": fit, "mse": mse, "loss": fit + prior}
        if gap is not None:
            out["continuity"] = gap
            out["loss"] = out["loss"] + self.shooting_weight * gap
        if self.penalty > 0 and len(self.model.networks):
            flat = states.reshape(-1, states.shape[-1])
            ctx = self.model.context(cond).repeat_interleave(states.shape[1], dim=0)
            net = self.model.neural_terms(flat, ctx) / self.model.deriv_scale
            out["penalty"] = (net * net).mean()
            out["loss"] = out["loss"] + self.penalty * out["penalty"]
        return out

    def on_fit_start(self) -> None:
        if self.warm_start_steps and self.smoothed is not None and not self.warm_started:
            self._warm_start()
        if len(self.segments) > 1 and not self.nodes_ready:
            self._place_nodes()

    def _warm_start(self) -> None:
        """Gradient matching, kept only when the model it gives solves over the data's window.

        On fast kinetics (rates of 100 beside rates of 1) the smoothed derivatives' residuals
        are noisy enough to teach a network a term that blows the trajectory up; trajectory
        fitting could then not take a single step, so it starts from the untrained networks.
        ``warm_start_discarded`` says why (None: kept).
        """
        before = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.warm_start_loss = gradient_matching(
            self.model, self.smoothed, self.warm_start_steps, self.warm_start_lr, self.weight_decay
        )
        self.warm_started.fill_(True)
        self.warm_start_discarded = self._solve_failure()
        if self.warm_start_discarded:
            self.model.load_state_dict(before)

    @torch.no_grad()
    def _solve_failure(self) -> str | None:
        """Why the model's trajectories over the data's times cannot be solved, or None."""
        conditions = torch.arange(self.model.initial.shape[0], device=self.times.device)
        try:
            states = self.model.simulate(self.times, conditions)
        except SolverFailed as err:
            return str(err)
        return None if torch.isfinite(states).all() else "non-finite states"

    # -- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        nets = list(self.model.networks.parameters())
        ids = {id(p) for p in nets}
        rest = [p for p in self.parameters() if id(p) not in ids and p.requires_grad]
        adam = torch.optim.AdamW(
            [
                {"params": nets, "weight_decay": self.weight_decay},
                {"params": rest, "weight_decay": 0.0},
            ],
            lr=self.lr,
        )
        adam_epochs = max(self.trainer.max_epochs - self.polish_epochs, 1)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            adam, T_max=adam_epochs, eta_min=self.lr * self.min_lr_ratio
        )
        lbfgs = torch.optim.LBFGS(
            [p for p in self.parameters() if p.requires_grad],
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
        current = [p.detach().clone() for p in self.parameters()]
        try:
            if self._polishing():
                record: dict[str, torch.Tensor] = {}

                def closure():
                    lbfgs.zero_grad()
                    out = self.losses(batch)
                    self._check_finite(out["loss"], current, first=not record)
                    self.manual_backward(out["loss"])
                    record.update(out)
                    return out["loss"]

                lbfgs.step(closure=closure)
                out = record
            else:
                out = self.losses(batch, shooting=self._shooting())
                self._check_finite(out["loss"], current, first=True)
                adam.zero_grad()
                self.manual_backward(out["loss"])
                if self.grad_clip:
                    self.clip_gradients(
                        adam, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm"
                    )
                adam.step()
            if not all(torch.isfinite(p).all() for p in self.parameters()):
                raise _NonFinite("parameters became NaN/inf")
        except (_NonFinite, SolverFailed) as err:
            self._stop(err)
            return
        if self.first_mse is None:
            self.first_mse = float(out["mse"].detach())
        n = batch["condition"].shape[0]
        for key, value in out.items():
            self.log(f"train/{key}", value.detach(), on_step=False, on_epoch=True, batch_size=n)
        self.log("lr", adam.param_groups[0]["lr"], on_step=False, on_epoch=True, batch_size=n)

    def _check_finite(self, loss: torch.Tensor, params: list[torch.Tensor], first: bool) -> None:
        if not torch.isfinite(loss):
            raise _NonFinite(f"loss became {loss.item()}")
        if first:  # these parameters gave a finite loss: the last good state
            self._last_good = params

    def _stop(self, err: Exception) -> None:
        """Restore the last parameters that gave a finite loss and stop training."""
        if self._last_good is not None:
            with torch.no_grad():
                for p, old in zip(self.parameters(), self._last_good, strict=True):
                    p.copy_(old)
        self.stop_reason = (
            f"training stopped at epoch {self.current_epoch}: {err}; the parameters of the "
            "last step with a finite loss are kept"
        )
        self.trainer.should_stop = True

    def on_train_epoch_end(self) -> None:
        if not self._polishing() and self.stop_reason is None:
            self.lr_schedulers().step()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        n = batch["condition"].shape[0]
        try:
            out = self.losses(batch)
            mse, fit = out["mse"], out["fit"]
            if not torch.isfinite(out["loss"]):
                raise _NonFinite(f"validation loss became {out['loss'].item()}")
        except (_NonFinite, SolverFailed) as err:
            if not self.trainer.sanity_checking:
                self._stop(err)
            mse = fit = torch.tensor(math.inf)
        self.log("val/mse", mse, batch_size=n, sync_dist=True)
        self.log("val/fit", fit, batch_size=n, sync_dist=True)

    # -- state kept across resumes -----------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ude_first_mse"] = self.first_mse

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.first_mse = checkpoint.get("ude_first_mse")
