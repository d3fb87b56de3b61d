"""Distillation at the edge: from a run's config to a report, for train.py and
``python -m ude.distill <run_dir> [key=value ...]``."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from ude.conf import CONF_DIR
from ude.config_check import no_such_key
from ude.errors import UdeError
from ude.progress import Progress

if TYPE_CHECKING:  # torch and the model load when a distillation runs, not for --help
    from ude.data.measurements import Measurements
    from ude.data.splits import Split
    from ude.model.hybrid import HybridODE

DEFAULT = CONF_DIR / "distill" / "default.yaml"


def distill_enabled(cfg: DictConfig) -> bool:
    """Whether the run's config asks for a distillation: ``distill=none`` sets
    ``distill.enabled: false``, which holds even where an experiment adds keys under
    ``distill`` (its distiller's options then wait for ``python -m ude.distill``)."""
    distill = cfg.get("distill")
    return bool(distill) and bool(distill.get("enabled", True))


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

    With ``split``, the distillation (screen, refits, bootstrap, band) sees the training
    entries alone (:meth:`ude.data.Split.training_data`) and the twin is judged on the
    held-out ones (``held_out`` in the metrics). ``cfg.forecast_interval`` (optional) holds
    the keyword arguments of the forecast band's
    :class:`ude.distill.uncertainty.LaplaceInterval` (n_samples, level, seed, ...); absent:
    its defaults; null or ``n_samples: 0``: no band. A distillation that finds no twin that
    can be solved writes why (status ``twin_unsolvable``) instead of raising.
    """
    from ude.distill.report import HeldOut, write_failure, write_report
    from ude.distill.selection import NoSolvableTwin
    from ude.distill.uncertainty import LaplaceInterval

    held_out, data, fitted = None, measurements, model
    if split is not None and split.has_held_out:
        data, kept = split.training_data(measurements)
        fitted = model.select_conditions(kept)
        initial = model.initial.detach().cpu().numpy()
        held_out = HeldOut(measurements, split, data.observable_scale(), initial, kept)
    regression, mixture = make_regression(cfg), make_mixture(cfg)
    try:
        result = make_distiller(cfg, progress).fit(fitted, data)
    except NoSolvableTwin as err:
        return write_failure(err, run_dir)
    uq = None
    if regression is not None:
        from ude.uq import bayesian_terms

        start, cpu = time.perf_counter(), time.process_time()
        with (progress or Progress()).stage("horseshoe"):
            uq, _ = bayesian_terms(result.integral, regression)
        uq["seconds"] = round(time.perf_counter() - start, 3)
        uq["cpu_seconds"] = round(time.process_time() - cpu, 3)  # the machine may be shared
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
        progress=progress,
        uq=uq,
        mixture=mixture,
    )


def uq_settings(cfg: DictConfig) -> DictConfig | None:
    """The ``uq`` node of a ``distill`` config with a preset's name (``none``, ``fast``:
    ude/uq/presets.yaml) replaced by its settings, in place; None when off (absent, null,
    ``none``, or ``enabled: false`` as in the default config)."""
    node = cfg.get("uq")
    if isinstance(node, str):
        presets = yaml.safe_load((Path(__file__).parents[1] / "uq" / "presets.yaml").read_text())
        if node not in presets:
            raise UdeError(
                f"distill.uq={node} is not a setting",
                source="distill.uq",
                fix=f"one of {', '.join(presets)}, or a mapping with a regression node",
            )
        cfg.uq = presets[node]
        node = cfg.get("uq")
    if node and not node.get("enabled", True):
        return None  # the default node: settings kept, uncertainty off
    return node or None


def make_regression(cfg: DictConfig):
    """The :class:`ude.uq.HorseshoeRegression` of a ``distill`` config node, or None."""
    from hydra.utils import instantiate

    node = uq_settings(cfg)
    if node is None or node.get("regression") is None:
        return None
    return instantiate(node.regression)


def make_mixture(cfg: DictConfig):
    """The :class:`ude.uq.StructureMixture` of a ``distill`` config node, or None."""
    from hydra.utils import instantiate

    node = uq_settings(cfg)
    if node is None or node.get("mixture") is None:
        return None
    return instantiate(node.mixture)


def make_distiller(cfg: DictConfig, progress: Progress | None = None):
    """The :class:`ude.distill.Distiller` of a ``distill`` config node, with its ``library``
    choice (plain values) when given; it shows its stages on ``progress``."""
    from hydra.utils import instantiate

    # objects go in through a partial: Hydra would turn them into config nodes
    distiller = instantiate(cfg.distiller, _partial_=True)(progress=progress)
    if isinstance(distiller.library, DictConfig | ListConfig):
        # a list of libraries (`distill.distiller.library`) arrives as a config node holding
        # the instantiated objects; the Distiller takes plain values
        distiller.library = OmegaConf.to_container(distiller.library, resolve=True)
    if cfg.get("library") is not None:
        distiller.library = OmegaConf.to_container(cfg.library, resolve=True)
    node = uq_settings(cfg)
    if node is not None and node.get("bootstrap") is not None:
        # the data resampled through the screen (ude.uq.StructureBootstrap) in place of
        # the rescoring of the refitted candidates
        distiller.bootstrap = instantiate(node.bootstrap)
    return distiller


def packaged_distiller(seed: int = 0, solver: str = "dopri5"):
    """The :class:`ude.distill.Distiller` that ``python train.py seed=SEED`` builds for a model
    trained with the ``solver`` method: :data:`DEFAULT`'s ``distill`` node, its ``${seed}``
    and ``${solver.method}`` set as that run's (the parts a Python ``Distiller`` is not given
    come from here: :meth:`ude.distill.Distiller.complete`)."""
    root = OmegaConf.create(
        {"seed": seed, "solver": {"method": solver}, "distill": OmegaConf.load(DEFAULT)}
    )
    return make_distiller(root.distill)


def oracle_clause(oracle: dict[str, Any] | None) -> str:
    """What the truth, refitted as a candidate, says of a structure that is not exact
    (:mod:`ude.distill.oracle`)."""
    if not oracle or oracle["verdict"] == "chosen is the truth's support":
        return ""
    if "delta" not in oracle:
        why = f": {oracle['why']}" if oracle.get("why") else ""
        return f" (oracle: {oracle['verdict']}{why})"
    return f" (oracle: {oracle['verdict']}; the truth refitted scores {oracle['delta']:+.1f})"


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
    if metrics.get("screened_on") == "data":
        line += (
            "; TRAINING MISSED THE DATA: the trained model's trajectories miss the data by "
            "more than their noise, so its terms were screened along the smoothed data instead"
        )
    truth = metrics.get("truth")
    if truth:
        line += f"; structure {'exact' if truth['exact'] else 'NOT exact'}"
        if truth["median_relative_error"] is not None:
            line += f", median coefficient error {truth['median_relative_error']:.1%}"
        if not truth["exact"]:  # the oracle speaks of a structure that is not the truth's
            line += oracle_clause(truth.get("oracle"))
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
        ends = [t for t in band.get("unbounded_from", []) if t is not None]
        if ends:
            line += f" up to t={min(ends):.3g} (unbounded past it)"
        if band["n_failed"]:
            line += f" ({band['n_failed']} of {band['n_samples']} draws failed)"
    if band.get("n_prior_bounded") and "band_failed" not in failed:
        n = band["n_prior_bounded"]
        line += (
            f"; {band['level']:.0%} band: {n} parameter direction{'s' if n > 1 else ''} "
            "bounded by the parameters' ranges, not the data"
        )
    dependence = band.get("residual_dependence", {})
    if dependence.get("effective_share", 1.0) < 1.0 and "band_failed" not in failed:
        d = dependence
        line += (
            f"; residuals not independent (lag-one correlation {d['serial_correlation']:.2f}, "
            f"replicate means' mean square {d['replicate_ratio']:.2f}x): the band counts "
            f"{d['effective_share']:.0%} of the entries as independent"
        )
    blocks = band.get("noise_blocks", {})
    if blocks.get("applied") and "band_failed" not in failed:
        line += (
            f"; noise differs between conditions (each series' variance "
            f"{blocks['min_ratio']:.2g}-{blocks['max_ratio']:.2g}x its observable's): the band "
            "takes the sandwich's precision"
        )
    predictive = metrics.get("predictive_band", {})
    if "coverage_of_truth" in predictive:
        line += (
            f"; {predictive['level']:.0%} band over {len(predictive['structures'])} "
            f"structure(s) covers {predictive['coverage_of_truth']:.0%} of the truth"
        )
        ends = [t for t in predictive.get("unbounded_from", []) if t is not None]
        if ends:
            line += f" up to t={min(ends):.3g} (unbounded past it)"
    for profile in predictive.get("profiles", []):
        line += "; " + profile_sentence(profile, predictive.get("level", 0.95))
    for warning in (metrics.get("uq") or {}).get("warnings", []) + predictive.get("warnings", []):
        line += f"; UQ WARNING: {warning}"
    rival = bootstrap_rival(metrics.get("structure_bootstrap"))
    if rival:
        line += f"; {rival}"
    for tie in metrics.get("ties") or []:
        terms = "; ".join(f"d{s}/dt += {e}" for s, e in tie["terms"].items())
        line += (
            f"; TIE: the data fit {terms} as well "
            f"(criterion {tie['criterion_difference']:+.1f}): they do not choose between them"
        )
    from ude.twin.symbolic import not_identified

    for target, params in not_identified(metrics.get("identifiability")).items():
        worst = max(params.items(), key=lambda kv: kv[1]["relative_error"] or float("inf"))
        rel = worst[1]["relative_error"]
        line += (
            f"; NOT IDENTIFIED by the data: {target}'s term ({worst[0]} relative error "
            f"{_error_share(rel)})"
        )
    for row in (metrics.get("identifiability") or {}).get("by_parsimony", []):
        line += "; " + parsimony_sentence(row)
    return line


def _error_share(rel: float | None) -> str:
    return "unbounded" if rel is None else f"{rel:.0%}"


def parsimony_sentence(row: dict[str, Any]) -> str:
    """The summary's words for a term identified only by parsimony (a row of
    :func:`ude.distill.identifiability.identified_by_parsimony`)."""
    lost = " and ".join(
        f"{p['term']} ({name}) relative error {_error_share(p['alone'])} alone, "
        f"{_error_share(p['with'])} beside"
        for name, p in row["parameters"].items()
    )
    return (
        f"IDENTIFIED ONLY BY PARSIMONY: {row['target']}'s {lost} a {row['term']} term that "
        f"fits as well (fit {row['fit_difference']:+.1f}, criterion "
        f"{row['criterion_difference']:+.1f}) and that the data do not exclude (its relative "
        f"error {_error_share(row['extra_relative_error'])})"
    )


def profile_sentence(profile: dict[str, Any], level: float) -> str:
    """The summary's words for a band widened along a profile (a record of
    :func:`ude.uq.ridge.widen`): the extra term's coefficient's range within the margin."""
    if profile.get("kept_from") is None:
        return f"the {profile['term']} term's profile kept no value"
    low = "below " if profile.get("open_below") else ""
    high = " and above" if profile.get("open_above") else ""
    return (
        f"{level:.0%} band and intervals widened along the {profile['target']} {profile['term']} "
        f"term's profile: its coefficient ({profile['parameter']}) fits within "
        f"{profile['margin']:.2f} of the best from {low}{profile['kept_from']:.3g} to "
        f"{profile['kept_to']:.3g}{high}"
    )


RIVAL_SHARE = 0.1
"""A structure that this share of the data's resamples choose is a rival the user must hear
of (issue 15: where the data do not identify the structure, the truth keeps a weight of 0.1)."""


def bootstrap_rival(section: dict[str, Any] | None) -> str | None:
    """The summary's note on the structure bootstrap (distill.json's
    ``structure_bootstrap``): the structure other than the twin's that the most resamples of
    the data chose, when at least :data:`RIVAL_SHARE` of them did; None otherwise."""
    rows = (section or {}).get("structures", [])
    own = next((r["bootstrap_share"] for r in rows if r.get("chosen")), 0.0)
    others = [r for r in rows if not r.get("chosen") and r["bootstrap_share"] >= RIVAL_SHARE]
    if not others:
        return None
    top = max(others, key=lambda r: r["bootstrap_share"])
    terms = "; ".join(f"d{s}/dt += {e}" for s, e in top["discovered"].items())
    return (
        f"STRUCTURE UNCERTAIN: {top['bootstrap_share']:.0%} of the data's resamples choose "
        f"{terms} (the twin's structure: {own:.0%})"
    )


def raise_if_no_twin(
    metrics: dict[str, Any], report_dir: str | Path, run_dir: str | Path | None = None
) -> None:
    """A distillation that found no twin (status ``twin_unsolvable``) ends the command with
    one line and exit status 2, after everything else is written: a user or a script must
    not read the run as a success. ``report_dir`` holds its distill.json; ``run_dir`` is the
    training run (default: the same folder)."""
    if metrics.get("status") == "twin_unsolvable":
        failure = metrics["failures"][0]
        raise UdeError(
            f"no twin: {failure['why']}",
            source=str(Path(report_dir) / "distill.json"),
            fix=failure["fix"].replace("<run_dir>", str(run_dir or report_dir)),
        )


def _percent(v: float) -> str:
    return f"{v:.2%}" if math.isfinite(v) else "FAILED (inf)"


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
    if not distill_enabled(cfg):  # trained with distill=none: the defaults, the run's keys on top
        kept = {k: v for k, v in (cfg.get("distill") or {}).items() if k != "enabled"}
        merged = OmegaConf.merge(OmegaConf.load(DEFAULT), kept)
        OmegaConf.update(cfg, "distill", merged, merge=False, force_add=True)
    for item in overrides:
        _override(cfg, item)
    with _inside(launch_dir(run_dir)):  # the run's relative paths start there
        datamodule, model, module = build_run(cfg)
    import torch

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

    measurements = datamodule.measurements
    model, _ = reported_model(model, measurements, datamodule.split)  # an ensemble's best
    return cfg, model, measurements, datamodule.split


def launch_dir(run_dir: Path) -> Path:
    """The directory ``python train.py`` ran in (Hydra's ``runtime.cwd`` in
    ``<run>/.hydra/hydra.yaml``), where the run's relative paths (``data.path``, a spec file)
    start; the current directory when the run does not say or that directory is gone."""
    try:
        saved = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml")
        cwd = Path(saved.hydra.runtime.cwd)
    except Exception:  # noqa: BLE001 - no record (a run trained from Python): as before
        return Path.cwd()
    return cwd if cwd.is_dir() else Path.cwd()


@contextlib.contextmanager
def _inside(directory: Path):
    """Work in ``directory`` for the block (``contextlib.chdir`` is Python 3.11+)."""
    before = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(before)


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
    raise_if_no_twin(metrics, out, run_dir)
    print(f"distillation written to {out}/ (the run's own twin is unchanged)")
    return metrics


def cli(prog: str = "ude-distill") -> None:
    """Errors a user can cause (run directory, overrides) print one line and exit 2."""
    from ude.errors import exit_2_on_user_errors

    with exit_2_on_user_errors():
        main(prog=prog)
