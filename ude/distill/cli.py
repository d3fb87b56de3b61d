"""Distillation at the edge: from a run's config to a report, for train.py and
``python -m ude.distill <run_dir> [key=value ...]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from ude.data.measurements import Measurements
from ude.distill.twin import not_identified
from ude.errors import UdeError
from ude.model.hybrid import HybridODE

DEFAULT = Path(__file__).resolve().parents[2] / "conf" / "distill" / "default.yaml"


def run_distill(
    cfg: DictConfig, model: HybridODE, measurements: Measurements, run_dir: str | Path
) -> dict[str, Any]:
    """Instantiate ``cfg`` (the ``distill`` node), distil ``model`` and write the report.

    ``cfg.forecast_interval`` (optional) holds the keyword arguments of the forecast band's
    :class:`ude.distill.uncertainty.LaplaceInterval` (n_samples, level, seed, ...); absent: its
    defaults; null or ``n_samples: 0``: no band.
    """
    from ude.distill.report import write_report
    from ude.distill.uncertainty import LaplaceInterval

    result = make_distiller(cfg).fit(model, measurements)
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
    )


def make_distiller(cfg: DictConfig):
    """The :class:`ude.distill.Distiller` of a ``distill`` config node, with its ``library``
    choice (plain values) when given."""
    from hydra.utils import instantiate

    distiller = instantiate(cfg.distiller)
    if cfg.get("library") is not None:
        distiller.library = OmegaConf.to_container(cfg.library, resolve=True)
    return distiller


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
    for tie in metrics.get("ties") or []:
        terms = "; ".join(f"d{s}/dt += {e}" for s, e in tie["terms"].items())
        line += (
            f"; TIE: the data fit {terms} as well "
            f"(criterion {tie['criterion_difference']:+.1f}): they do not choose between them"
        )
    for target, params in not_identified(metrics.get("identifiability")).items():
        worst = max(params.items(), key=lambda kv: kv[1]["relative_error"] or float("inf"))
        rel = worst[1]["relative_error"]
        line += (
            f"; NOT IDENTIFIED by the data: {target}'s term ({worst[0]} relative error "
            + ("unbounded" if rel is None else f"{rel:.0%}")
            + ")"
        )
    return line


def load_run(run_dir: Path, overrides: list[str]) -> tuple[DictConfig, HybridODE, Measurements]:
    """The run's config (with ``overrides`` and a ``distill`` node), the trained model and
    the data, rebuilt from ``config.yaml`` and ``checkpoints/last.ckpt``."""

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
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UdeError(
                f"override '{item}' is not key=value",
                source="command line",
                fix="e.g. distill.distiller.selector.criterion=aicc",
            )
        try:
            OmegaConf.update(cfg, key, yaml.safe_load(value), merge=True, force_add=True)
        except Exception as err:  # noqa: BLE001 - any failure here is a bad override
            raise UdeError(f"cannot set '{key}': {err}", source="command line") from None
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
    return cfg, model, measurements


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m ude.distill <run_dir> [key=value ...]``: distil a finished run again."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        raise UdeError(
            "usage: python -m ude.distill <run_dir> [key=value ...]",
            source="command line",
            fix="e.g. python -m ude.distill outputs/<day>/<time> "
            "distill.distiller.selector.criterion=aicc",
        )
    run_dir = Path(argv[0])
    cfg, model, measurements = load_run(run_dir, argv[1:])
    metrics = run_distill(cfg.distill, model, measurements, run_dir)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        saved = json.loads(metrics_path.read_text())
        saved["distill"] = metrics
        metrics_path.write_text(json.dumps(saved, indent=2, default=float))
    print(summary(metrics))
    print(f"twin: {run_dir / 'twin.json'}")
    return metrics


def cli() -> None:
    """Errors a user can cause (run directory, overrides) print one line and exit 2."""
    from ude.runs import exit_2_on_user_errors

    with exit_2_on_user_errors():
        main()
