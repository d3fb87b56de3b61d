"""Distillation at the edge: from a run's config to a report, for train.py and
``python -m ude.distill <run_dir> [key=value ...]``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from ude.data.measurements import Measurements
from ude.data.splits import Split
from ude.errors import UdeError
from ude.model.hybrid import HybridODE

DEFAULT = Path(__file__).resolve().parents[2] / "conf" / "distill" / "default.yaml"


def run_distill(
    cfg: DictConfig,
    model: HybridODE,
    measurements: Measurements,
    run_dir: str | Path,
    split: Split | None = None,
) -> dict[str, Any]:
    """Instantiate ``cfg`` (the ``distill`` node), distil ``model`` and write the report.

    With ``split``, the distillation (screen, refits, bootstrap, band) sees the training
    entries alone (:meth:`ude.data.Split.training_data`) and the twin is judged on the
    held-out ones (``held_out`` in the metrics). ``cfg.forecast_interval`` (optional) holds
    the keyword arguments of the forecast band's
    :class:`ude.distill.uncertainty.LaplaceInterval` (n_samples, level, seed, ...); absent:
    its defaults; null or ``n_samples: 0``: no band. A distillation that finds no twin that
    can be solved writes why (status ``twin_unsolvable``) instead of raising.
    """
    from hydra.utils import instantiate

    from ude.distill.report import HeldOut, write_failure, write_report
    from ude.distill.selection import NoSolvableTwin
    from ude.distill.uncertainty import LaplaceInterval

    held_out, data, fitted = None, measurements, model
    if split is not None and split.has_held_out:
        data, kept = split.training_data(measurements)
        fitted = model.select_conditions(kept)
        initial = model.initial.detach().cpu().numpy()
        held_out = HeldOut(measurements, split, data.observable_scale(), initial, kept)
    distiller = instantiate(cfg.distiller)
    try:
        result = distiller.fit(fitted, data)
    except NoSolvableTwin as err:
        return write_failure(err, run_dir)
    options = cfg.get("forecast_interval", {})
    interval = None
    if options is not None and options.get("n_samples", 1) > 0:
        interval = LaplaceInterval(**options)
    return write_report(
        result,
        fitted,
        data,
        run_dir,
        horizon=float(cfg.get("forecast_horizon", 10.0)),
        interval=interval,
        held_out=held_out,
    )


def summary(metrics: dict[str, Any]) -> str:
    """One line a user can trust: what was distilled, and every failure as a failure."""
    status = metrics.get("status", "ok")
    if status == "twin_unsolvable":
        n = len(metrics.get("path", []))
        return (
            f"distillation FAILED (status twin_unsolvable): none of the {n} candidate twins "
            "could be integrated over the data; nothing was distilled (see distill.json)"
        )
    terms = "; ".join(f"d{s}/dt += {e}" for s, e in metrics["discovered"].items())
    head = f"distilled in {metrics['timings']['total_seconds']:.1f} s"
    line = head + (f" (status {status})" if status != "ok" else "") + f": {terms}"
    truth = metrics.get("truth")
    if truth:
        line += f"; structure {'exact' if truth['exact'] else 'NOT exact'}"
        if truth["median_relative_error"] is not None:
            line += f", median coefficient error {truth['median_relative_error']:.1%}"
    failed = {f["status"]: f["why"] for f in metrics.get("failures", [])}
    horizon = f"t={metrics['forecast_horizon']:g}" if "forecast_horizon" in metrics else ""
    if "forecast_nmse" in metrics:
        err = ", ".join(f"{k} {_percent(v)}" for k, v in metrics["forecast_nmse"].items())
        line += f"; forecast NMSE to {horizon}: {err}"
    if "forecast_failed" in failed:
        line += f"; forecast FAILED: {failed['forecast_failed']}"
    held = metrics.get("held_out")
    if held:
        err = f"{held['nmse']:.3g}" if math.isfinite(held["nmse"]) else "FAILED (inf)"
        line += f"; held-out NMSE {err} ({held['n_points']} entries)"
    band = metrics.get("forecast_interval", {})
    if "band_failed" in failed:
        line += f"; {band.get('level', 0.95):.0%} band FAILED: {failed['band_failed']}"
    elif "coverage_of_truth" in band:
        line += f"; {band['level']:.0%} band covers {band['coverage_of_truth']:.0%} of the truth"
        if band["n_failed"]:
            line += f" ({band['n_failed']} of {band['n_samples']} draws failed)"
    return line


def raise_if_no_twin(metrics: dict[str, Any], run_dir: str | Path) -> None:
    """A distillation that found no twin (status ``twin_unsolvable``) ends the command with
    one line and exit status 2, after everything else is written: a user or a script must
    not read the run as a success."""
    if metrics.get("status") == "twin_unsolvable":
        failure = metrics["failures"][0]
        raise UdeError(
            f"no twin: {failure['why']}",
            source=str(Path(run_dir) / "distill.json"),
            fix=failure["fix"].replace("<run_dir>", str(run_dir)),
        )


def _percent(v: float) -> str:
    return f"{v:.2%}" if math.isfinite(v) else "FAILED (inf)"


def load_run(run_dir: Path, overrides: list[str]) -> tuple[DictConfig, HybridODE, Any]:
    """The run's config (with ``overrides`` and a ``distill`` node), the trained model and
    the datamodule (the data and their split), rebuilt from ``config.yaml`` and
    ``checkpoints/last.ckpt``."""

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
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    try:
        module.load_state_dict(state["state_dict"])
    except (KeyError, RuntimeError) as err:
        raise UdeError(
            f"checkpoint does not match the run's config: {str(err).splitlines()[0]}",
            source=str(ckpt),
        ) from None
    model.eval()
    return cfg, model, datamodule


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
    cfg, model, datamodule = load_run(run_dir, argv[1:])
    metrics = run_distill(
        cfg.distill, model, datamodule.measurements, run_dir, getattr(datamodule, "split", None)
    )
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        saved = json.loads(metrics_path.read_text())
        saved["distill"] = metrics
        metrics_path.write_text(json.dumps(saved, indent=2, default=float))
    print(summary(metrics))
    raise_if_no_twin(metrics, run_dir)
    print(f"twin: {run_dir / 'twin.json'}")
    return metrics


def cli() -> None:
    """Errors a user can cause (run directory, overrides) print one line and exit 2."""
    from ude.runs import exit_2_on_user_errors

    with exit_2_on_user_errors():
        main()
