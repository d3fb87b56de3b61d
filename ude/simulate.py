"""python -m ude.simulate <twin> [key=value ...]: the same as ude-simulate (:mod:`ude.twin.cli`)."""

from ude.twin.cli import cli_simulate

if __name__ == "__main__":
    cli_simulate(prog="python -m ude.simulate")
