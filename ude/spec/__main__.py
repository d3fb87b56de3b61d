"""python -m ude.spec check|export ...: the same as ude-spec (:mod:`ude.spec.cli`)."""

import sys

from ude.spec.cli import main

sys.exit(main(prog="python -m ude.spec"))
