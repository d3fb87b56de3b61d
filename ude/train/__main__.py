"""python -m ude.train [group=option] [key=value ...]: the same as ude-train and train.py."""

from ude.train.cli import cli

if __name__ == "__main__":
    cli()
