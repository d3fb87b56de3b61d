"""python -m ude.distill <run_dir> [key=value ...] [--name NAME]: the same as ude-distill."""

from ude.distill.cli import cli

cli(prog="python -m ude.distill")
