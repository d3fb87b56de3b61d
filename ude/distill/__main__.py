"""python -m ude.distill <run_dir> [key=value ...] [--name NAME]: the same as ude-distill."""

from ude.distill.cli import cli

if __name__ == "__main__":
    cli(prog="python -m ude.distill")
