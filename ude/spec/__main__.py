"""python -m ude.spec check|export ...: the same as ude-spec (:mod:`ude.spec.cli`)."""

import sys

from ude.spec.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m ude.spec"))
