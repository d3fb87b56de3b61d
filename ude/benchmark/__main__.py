"""python -m ude.benchmark suite=smoke|standard|full [key=value ...]: the same as
ude-benchmark and benchmark.py."""

from ude.benchmark.cli import cli

if __name__ == "__main__":
    cli()
