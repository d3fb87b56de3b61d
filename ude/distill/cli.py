"""Distillation at the edge: from a run's config to a report, for train.py and
``python -m ude.distill <run_dir> [key=value ...]``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from ude.conf import CONF_DIR
from ude.config_check import no_such_key
from ude.data.measurements import Measurements
from ude.data.splits import Split
from ude.errors import UdeError
from ude.model.hybrid import HybridODE
from ude.progress import Progress

DEFAULT = CONF_DIR / "distill" / "default.yaml"


def run_distill(
    cfg: DictConfig,
    model: HybridODE,
    measurements: Measurements,
    run_dir: str | Path,
    split: Split | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Instantiate ``cfg`` (the ``distill`` node), distil ``model`` and write the report
    (its plots mark the data ``split`` holds out); ``progress`` shows the stages.

    ``cfg.forecast_interval`` (optional) holds the keyword arguments of the forecast band's
    :class:`ude.distill.uncertainty.LaplaceInterval` (n_samples, level, seed, ...); absent: its
    defaults; null or ``n_samples: 0``: no band.
    """
    from hydra.utils import instantiate

    from ude.distill.report import write_report
    from ude.distill.uncertainty import LaplaceInterval

    # objects go in through a partial: Hydra would turn them into config nodes
    distiller = instantiate(cfg.distiller, _partial_=True)(progress=progress)
    result = distiller.fit(model, measurements)
    options = cfg.get("forecast_interval", {})
    interval = None
    if options is not None and options.get("n_samples", 1) > 0:
        interval = LaplaceInterval(**options)
    return write_report(
        result,
        model,
        measurements,
        run_dir,
        horizon=float(cfg.get("forecast_horizon", 10.0)),
        interval=interval,
        split=split,
        progress=progress,
    )


def summary(metrics: dict[str, Any]) -> str:
    terms = "; ".join(f"d{s}/dt += {e}" for s, e in metrics["discovered"].items())
    line = f"distilled in {metrics['timings']['total_seconds']:.1f} s: {terms}"
    truth = metrics.get("truth")
    if truth:
        line += f"; structure {'exact' if truth['exact'] else 'NOT exact'}"
        if truth["median_relative_error"] is not None:
            line += f", median coefficient error {truth['median_relative_error']:.1%}"
    if "forecast_nmse" in metrics:
        err = ", ".join(f"{k} {v:.2%}" for k, v in metrics["forecast_nmse"].items())
        line += f"; forecast NMSE to t={metrics['forecast_horizon']:g}: {err}"
    band = metrics.get("forecast_interval", {})
    if "coverage_of_truth" in band:
        line += f"; {band['level']:.0%} band covers {band['coverage_of_truth']:.0%} of the truth"
    return line


def _override(cfg: DictConfig, item: str) -> None:
    """Apply ``key=value`` (the key must exist) or ``+key=value`` (it may be new) to ``cfg``."""
    key, sep, value = item.partition("=")
    add = key.startswith("+")
    key = key.lstrip("+")
    if not sep or not key:
        raise UdeError(
            f"override '{item}' is not key=value",
            source="command line",
            fix="e.g. distill.distiller.selector.criterion=aicc",
        )
    *parents, last = key.split(".")
    node = OmegaConf.select(cfg, ".".join(parents)) if parents else cfg
    if not add and not (isinstance(node, DictConfig) and last in node):
        siblings = node.keys() if isinstance(node, DictConfig) else []
        raise no_such_key(key, siblings, add=f"+{item.lstrip('+')}")
    try:
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=True, force_add=True)
    except Exception as err:  # noqa: BLE001 - any failure here is a bad override
        raise UdeError(f"cannot set '{key}': {err}", source="command line") from None


def load_run(
    run_dir: Path, overrides: list[str]
) -> tuple[DictConfig, HybridODE, Measurements, Split]:
    """The run's config (with ``overrides`` and a ``distill`` node), the trained model, the
    data and its split, rebuilt from ``config.yaml`` and ``checkpoints/last.ckpt``."""

    from ude.runs import build_run

    cfg_path, ckpt = run_dir / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    for p in (cfg_path, ckpt):
        if not p.is_file():
            raise UdeError(
                "not found", source=str(p), fix="give the directory of a finished train.py run"
            )
    cfg = OmegaConf.load(cfg_path)
    if not cfg.get("distill"):
        OmegaConf.update(cfg, "distill", OmegaConf.load(DEFAULT), force_add=True)
    for item in overrides:
        _override(cfg, item)
    datamodule, model, module = build_run(cfg)
    measurements = datamodule.measurements
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    try:
        module.load_state_dict(state["state_dict"])
    except (KeyError, RuntimeError) as err:
        raise UdeError(
            f"checkpoint does not match the run's config: {str(err).splitlines()[0]}",
            source=str(ckpt),
        ) from None
    model.eval()
    from ude.fit import reported_model

    model, _ = reported_model(model, measurements, datamodule.split)  # an ensemble's best
    return cfg, model, measurements, datamodule.split


def new_distill_dir(run_dir: Path, name: str | None) -> Path:
    """A new folder ``run_dir/distill/<name>`` (default name: the date and time)."""
    parent = run_dir / "distill"
    if name is not None:
        if not name or Path(name).name != name or name in {".", ".."}:
            raise UdeError(f"'{name}' is not a folder name", source="--name")
        if (parent / name).exists():
            raise UdeError(
                "exists",
                source=str(parent / name),
                fix="give another --name: a re-distillation never replaces an earlier one",
            )
        return parent / name
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    out, n = parent / stamp, 1
    while out.exists():
        n += 1
        out = parent / f"{stamp}_{n}"
    return out


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} <run_dir> [key=value ...] [--name NAME]",
        description="Distil a finished training run again, with other settings. The result "
        "goes to <run_dir>/distill/<name>/ (twin.json, equations.md, distill.json, twin.sbml, "
        "plots/ and config.yaml, the settings used); the run's own twin is left as it is.",
        epilog=f"example: {prog} outputs/<day>/<time> distill.distiller.selector.criterion=aicc",
    )
    parser.add_argument("run_dir", nargs="?", help="the directory of a finished train run")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="settings over the run's config.yaml (+key=value adds a key the config lacks)",
    )
    parser.add_argument(
        "--name", help="the subfolder under <run_dir>/distill/ (default: the date and time)"
    )
    return parser


def main(argv: list[str] | None = None, prog: str = "ude-distill") -> dict[str, Any]:
    """``ude-distill <run_dir> [key=value ...] [--name NAME]``: distil a finished run again
    into ``<run_dir>/distill/<name>/``; returns the distillation's metrics."""
    parser = _parser(prog)
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    if args.run_dir is None:  # argparse would also call the optional overrides required
        parser.error("give the directory of a finished train run, e.g. outputs/<day>/<time>")
    run_dir = Path(args.run_dir)
    cfg, model, measurements, split = load_run(run_dir, args.overrides)
    out = new_distill_dir(run_dir, args.name)
    out.mkdir(parents=True)
    command = " ".join([prog, str(run_dir), *args.overrides])
    (out / "config.yaml").write_text(
        f"# {command}\n# the run's config with these settings, {time.strftime('%Y-%m-%d %H:%M')}\n"
        + OmegaConf.to_yaml(cfg, resolve=True)
    )
    from ude.progress import ConsoleProgress

    progress = ConsoleProgress()
    try:
        metrics = run_distill(cfg.distill, model, measurements, out, split, progress=progress)
    finally:
        progress.close_all()
    print(summary(metrics))
    print(f"distillation written to {out}/ (the run's own twin is unchanged)")
    return metrics


def cli(prog: str = "ude-distill") -> None:
    """Errors a user can cause (run directory, overrides) print one line and exit 2."""
    from ude.runs import exit_2_on_user_errors

    with exit_2_on_user_errors():
        main(prog=prog)
