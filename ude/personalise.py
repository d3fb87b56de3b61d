"""python -m ude.personalise <twin> data.path=new.csv [key=value ...]: the same as
ude-personalise (:mod:`ude.twin.cli`)."""

from ude.twin.cli import cli_personalise

if __name__ == "__main__":
    cli_personalise(prog="python -m ude.personalise")
