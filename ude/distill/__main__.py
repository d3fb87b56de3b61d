"""python -m ude.distill <run_dir> [key=value ...]"""

from ude.distill.cli import cli

cli()
