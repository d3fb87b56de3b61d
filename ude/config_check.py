"""Checks of the values in a composed config, so a bad override is one clear message."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from ude.errors import UdeError

# key: (expected types, test, what is expected)
_RULES: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "seed": ((int,), lambda v: v >= 0, "an integer >= 0"),
    "threads": ((int, type(None)), lambda v: v is None or v >= 1, "null or an integer >= 1"),
    "trainer.max_epochs": ((int,), lambda v: v >= 1, "an integer >= 1"),
    "trainer.check_val_every_n_epoch": ((int,), lambda v: v >= 1, "an integer >= 1"),
    "optim.lr": ((int, float), lambda v: v > 0, "a number > 0"),
    "optim.min_lr_ratio": ((int, float), lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "optim.weight_decay": ((int, float), lambda v: v >= 0, "a number >= 0"),
    "optim.penalty": ((int, float), lambda v: v >= 0, "a number >= 0"),
    "optim.polish_epochs": ((int,), lambda v: v >= 0, "an integer >= 0"),
    "optim.loss": ((str,), lambda v: v in {"nll", "mse"}, "nll or mse"),
    "model.hidden": ((int,), lambda v: v >= 1, "an integer >= 1"),
    "model.depth": ((int,), lambda v: v >= 1, "an integer >= 1"),
    "model.learn_initial": ((bool,), lambda v: True, "true or false"),
    "solver.rtol": ((int, float), lambda v: v > 0, "a number > 0"),
    "solver.atol": ((int, float), lambda v: v > 0, "a number > 0"),
    "solver.adjoint": ((bool,), lambda v: True, "true or false"),
    "data.batch_size": (
        (int, type(None)),
        lambda v: v is None or v >= 1,
        "null or an integer >= 1",
    ),
}


def _select(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False, None
        node = node[part]
    return True, node


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`UdeError` naming the first key whose value is of the wrong kind."""
    for key, (types, test, expected) in _RULES.items():
        present, value = _select(cfg, key)
        if not present:
            continue
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok or not test(value):
            raise UdeError(
                f"got {value!r}, expected {expected}",
                source="config",
                where=key,
                fix=f"override it as {key}=<value>",
            )
    epochs, polish = cfg.trainer.get("max_epochs"), cfg.get("optim", {}).get("polish_epochs", 0)
    if isinstance(epochs, int) and polish > epochs:
        raise UdeError(
            f"optim.polish_epochs={polish} exceeds trainer.max_epochs={epochs}",
            source="config",
            where="optim.polish_epochs",
        )
