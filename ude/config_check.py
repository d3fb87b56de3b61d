"""Checks of the values in a composed config, so a bad override is one clear message."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue

from ude.errors import UdeError

# What to pass for a mandatory value (``???`` in conf/) left unset.
_MISSING_HINTS = {
    "data.path": "give your measurements table as data.path=my_data.csv, "
    "a wide or long CSV as in the README's 'Your own data'",
}

ACTIVATION_NAMES = ("tanh", "gelu", "silu", "softplus", "relu", "rbf")
"""``model.activation``'s choices (:data:`ude.model.networks.ACTIVATIONS`, in this order)."""

RESUME_MODES = ("auto", "never")
"""``resume``'s choices (:func:`ude.train.resume.resume_point`)."""

REFIT_OPTIMIZERS = ("lbfgs", "gauss_newton", "auto")
"""A twin refit's ``optimizer`` choices (:class:`ude.distill.refit.TwinRefit`)."""

# key: (expected types, test, what is expected)
_RULES: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "seed": ((int,), lambda v: v >= 0, "an integer >= 0"),
    "data.seed": ((int,), lambda v: v >= 0, "an integer >= 0"),
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
    "resume": ((str,), lambda v: v in RESUME_MODES, " or ".join(RESUME_MODES)),
    "model.activation": (
        (str,),
        lambda v: v in ACTIVATION_NAMES,
        "one of " + ", ".join(ACTIVATION_NAMES),
    ),
    **{
        f"distill.distiller.{refit}.optimizer": (
            (str,),
            lambda v: v in REFIT_OPTIMIZERS,
            " or ".join(REFIT_OPTIMIZERS),
        )
        for refit in ("score_refit", "refit")
    },
    "distill.distiller.misfit_ratio": ((int, float), lambda v: v > 0, "a number > 0"),
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


def missing_value(key: str, source: str = "config") -> UdeError:
    """The error for a mandatory value (``???``) nobody set, saying what to pass."""
    fix = _MISSING_HINTS.get(key, f"set it on the command line: {key}=<value>")
    return UdeError("no value given", source=source, where=key, fix=fix)


def no_such_key(
    key: str, siblings: Iterable[Any], add: str | None = None, source: str = "command line"
) -> UdeError:
    """The error for an override of ``key`` (dotted) that the config lacks: the nearest of
    ``siblings`` (the keys beside it) as a suggestion, and how to add a new key instead."""
    *parent, last = key.split(".")
    names = sorted(str(s) for s in siblings)
    close = difflib.get_close_matches(last, names, n=1, cutoff=0.6)
    if close:
        hint = f"did you mean {'.'.join([*parent, close[0]])}?"
    elif names:
        under = f"under {'.'.join(parent)}" if parent else "at the top"
        shown = ", ".join(names[:15]) + (", ..." if len(names) > 15 else "")
        hint = f"the keys {under} are: {shown}."
    else:
        hint = "that part of the config has no keys."
    return UdeError(
        "no such key",
        source=source,
        where=key,
        fix=f"{hint} To add a new key: {add or '+' + key + '=<value>'}",
    )


def config_error(err: BaseException) -> UdeError | None:
    """A Hydra/OmegaConf error a user caused (an unknown key, an unset mandatory value) as a
    :class:`UdeError` that says what to pass; None for any other error."""
    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    for e in chain:
        if isinstance(e, MissingMandatoryValue) and getattr(e, "full_key", None):
            return missing_value(e.full_key)
        unknown = isinstance(e, (ConfigKeyError, ConfigAttributeError))
        if unknown and "not in struct" in str(getattr(e, "msg", e)):
            parent = getattr(e, "parent_node", None)
            if parent is None or not getattr(e, "full_key", None):
                continue
            add = re.search(r"use (\+\S+)", str(chain[0]))
            return no_such_key(e.full_key, parent.keys(), add.group(1) if add else None)
    return None


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`UdeError` naming the first key whose value is unset (``???``) or of the
    wrong kind."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise missing_value(missing[0])
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
