"""The twin: a finished run's symbolic model with its fitted values, the product's noun.

::

    from ude.twin import Twin
    twin = Twin.load("outputs/<day>/<time>")      # what a run's distillation wrote
    twin.simulate(times, condition="p03", doses=[Dose(24, "A", 100)])   # a table with a band
    me = twin.personalise("new_patient.csv", doses="new_doses.csv")      # a personal twin
    me.to_sbml("me.xml"); print(me.equations())

:mod:`ude.twin.symbolic` holds the twin as a ModelSpec and its twin.json form;
:mod:`ude.twin.personalise` the MAP fit of a new subject; :mod:`ude.twin.cli` the commands
``python -m ude.personalise`` and ``python -m ude.simulate``. The class loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ude._lazy import lazy_getattr

_LAZY = {
    "Dose": "ude.data.doses",
    "Gaussian": "ude.twin.band",
    "Twin": "ude.twin.twin",
    "TwinCondition": "ude.twin.twin",
}

if TYPE_CHECKING:
    from ude.data.doses import Dose
    from ude.twin.band import Gaussian
    from ude.twin.twin import Twin, TwinCondition

__all__ = ["Dose", "Gaussian", "Twin", "TwinCondition"]

__getattr__ = lazy_getattr("ude.twin", _LAZY, globals())
