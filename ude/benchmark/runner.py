"""The benchmark at the edge: from a (Hydra) config to cells, methods, results and the report.

Library code elsewhere in :mod:`ude.benchmark` takes plain values; this module is the one that
reads config trees, for ``benchmark.py`` and its multirun callback.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ude.benchmark.methods import Method
from ude.benchmark.report import read_csv, write_report
from ude.benchmark.suite import Cell, expand, processor, read_results, run_suite
from ude.errors import UdeError
from ude.progress import ConsoleProgress


def suite_cells(cfg: DictConfig) -> list[Cell]:
    """The cells of ``cfg.suite``."""
    s = cfg.suite
    for key in ("systems", "methods"):
        if not s.get(key):
            raise UdeError("missing or empty", source="benchmark", where=f"suite.{key}")
    axes, base = s.get("axes"), s.get("base")
    return expand(
        systems=list(s.systems),
        methods=list(s.methods),
        axes=OmegaConf.to_container(axes, resolve=True) if axes else {},
        base=OmegaConf.to_container(base, resolve=True) if base else {},
        seeds=list(s.get("seeds") or [0]),
    )


def build_methods(cfg: DictConfig, names: list[str]) -> dict[str, Method]:
    """Instantiate the suite's methods from ``cfg.methods``."""
    from hydra.utils import instantiate

    out = {}
    for name in names:
        if name not in cfg.methods:
            raise UdeError(
                f"unknown method '{name}'",
                source="benchmark",
                where="suite.methods",
                fix="configured methods: " + ", ".join(cfg.methods),
            )
        method = instantiate(cfg.methods[name])
        if not callable(getattr(method, "fit", None)):
            raise UdeError(
                f"methods.{name} has no fit(problem) method", source="benchmark", where=name
            )
        out[name] = method
    return out


def machine() -> str:
    """A one-line description of this machine."""
    import os

    cpus = os.cpu_count()
    return f"{platform.system()} {platform.machine()} ({processor()}), {cpus} logical CPUs"


def included_rows(cfg: DictConfig) -> list[dict[str, Any]]:
    """The rows of the ``results.csv`` files that ``include`` names (one path or a list),
    for a report that joins earlier runs' results to ``out_dir``'s."""
    paths = cfg.get("include") or []
    rows = []
    for path in [paths] if isinstance(paths, str) else list(paths):
        if not Path(path).is_file():
            raise UdeError(
                "no such file", source=str(path), where="include", fix="a results.csv path"
            )
        rows += read_csv(path)
    return rows


def report_for(cfg: DictConfig, seconds: float | None = None) -> Path:
    """Write the report of everything in ``cfg.out_dir`` that belongs to ``cfg.suite``."""
    ids = {c.id for c in suite_cells(cfg)}
    by_id = {r["id"]: r for r in included_rows(cfg)}
    by_id.update((r["id"], r) for r in read_results(cfg.out_dir))  # out_dir's rows win
    rows = [r for r in by_id.values() if r["id"] in ids]
    header = (
        f"Suite `{cfg.suite.name}`: {len(rows)} of {len(ids)} cells have results. "
        f"Machine: {machine()}."
    )
    if seconds is not None:
        header += f" This run's wall time: {seconds:.0f} s."
    path = write_report(rows, cfg.out_dir, title=f"Benchmark: {cfg.suite.name}", header=header)
    print(f"report: {path}")
    _log_report(cfg, path, rows)
    return path


def _log_report(cfg: DictConfig, path: Path, rows: list[dict[str, Any]]) -> None:
    """The written report to the configured loggers (``logger=wandb``)."""
    from hydra.utils import instantiate

    from ude.benchmark.report import challenge_table

    config = OmegaConf.to_container(cfg, resolve=True)
    for node in (cfg.get("logger") or {}).values():
        folder = instantiate(node).log(path, challenge_table(rows), config)
        if folder:
            print(f"W&B run saved offline; upload it with: wandb sync {folder}")


def run(cfg: DictConfig, multirun: bool = False) -> dict[str, Any]:
    """Run this job's shard of the suite and (single runs) write the report."""
    import torch

    if not 0 <= cfg.shard < cfg.n_shards:
        raise UdeError(
            f"shard={cfg.shard}, n_shards={cfg.n_shards}",
            source="benchmark",
            fix="0 <= shard < n_shards",
        )
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if cfg.get("only_report"):
        return {"report": str(report_for(cfg))}
    start = time.perf_counter()
    cells = suite_cells(cfg)
    methods = build_methods(cfg, list(cfg.suite.methods))
    progress = ConsoleProgress()
    try:
        rows = run_suite(
            cells,
            methods,
            cfg.out_dir,
            shard=cfg.shard,
            n_shards=cfg.n_shards,
            progress=progress,
        )
    finally:
        progress.close_all()
    seconds = time.perf_counter() - start
    print(f"benchmark: {len(rows)} cells run in {seconds:.0f} s; results in {cfg.out_dir}")
    if cfg.report and not multirun:
        report_for(cfg, seconds)
    return {"cells": len(rows), "seconds": seconds}
