"""The benchmark's report on W&B (``python benchmark.py logger=wandb``): the summary table
(methods x challenges), every cell's row, the report's figures and ``report.md``, in one W&B
run, offline unless the user is logged in (``WANDB_MODE`` wins when set)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def markdown_table(text: str) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of a Markdown table (``| a | b |`` lines, the rule line left out)."""
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    rows = [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]
    return cells[0], rows


class WandbReport:
    """Logs a written benchmark report to a W&B run in ``save_dir/wandb``.

    Args:
        project: the W&B project.
        save_dir: where the run's files go (offline runs: ``wandb sync`` uploads them).
        name: the run's name (default: the suite's).
        tags: W&B tags.
    """

    def __init__(
        self, project: str, save_dir: str, name: str | None = None, tags: list[str] | None = None
    ):
        self.project, self.save_dir, self.name = project, save_dir, name
        self.tags = list(tags or [])

    def log(self, report: Path, summary: str, config: dict[str, Any]) -> str | None:
        """Log the report in ``report``'s folder (``report.md``, ``results.csv``, ``plots/``)
        with its ``summary`` table (Markdown) and the benchmark's ``config``; returns the
        offline run's folder (None online)."""
        import wandb

        from ude.train.loggers import wandb_offline

        out = report.parent
        Path(self.save_dir).mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=self.project,
            name=self.name,
            dir=self.save_dir,
            config=config,
            tags=self.tags,
            mode="offline" if wandb_offline() else None,
            settings=wandb.Settings(quiet=True),
            reinit="finish_previous",
        )
        try:
            columns, rows = markdown_table(summary)
            logged: dict[str, Any] = {"benchmark/summary": wandb.Table(columns, rows)}
            with (out / "results.csv").open(newline="") as fh:
                table = list(csv.reader(fh))
            if table:
                logged["benchmark/results"] = wandb.Table(table[0], table[1:])
            for png in sorted((out / "plots").glob("*.png")):
                logged[f"benchmark/{png.stem}"] = wandb.Image(str(png))
            run.log(logged)
            art = wandb.Artifact(f"benchmark-report-{run.id}", type="report")
            for name in ("report.md", "results.csv"):
                if (out / name).is_file():
                    art.add_file(str(out / name))
            run.log_artifact(art)
            offline = bool(getattr(run, "offline", False))
            folder = run.settings.sync_dir
        finally:
            run.finish()
        return str(folder) if offline else None
