"""The structure-averaged predictive band (ude/uq/mixture.py) on a finished train.py run,
distilled again in this process with distill.uq on (the horseshoe off): its CPU time with every
structure in its own solve and the Hessians row by row (before) against the structures on a
fixed grid in one solve and the Hessians in one batched pass (after), alternated twice, and
whether the bands are identical. Printed, not asserted.

    OMP_NUM_THREADS=1 python bench/uq_band_cost.py RUN_DIR
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENDS = ("lower", "upper", "state_lower", "state_upper")


def main() -> None:
    import ude.distill.uncertainty as unc
    import ude.uq.mixture as mix
    from ude.distill.cli import load_run, make_distiller, make_mixture
    from ude.distill.report import forecast

    overrides = ["distill.uq.enabled=true", "distill.uq.regression=null"]
    cfg, model, measurements, _ = load_run(Path(sys.argv[1]), overrides)
    result = make_distiller(cfg.distill).fit(model, measurements)
    mixture = make_mixture(cfg.distill)
    initial = result.model.initial.detach().cpu().numpy()
    times, _, truth = forecast(result.twin, initial, measurements, 10.0)
    stackable, ref = mix.stackable, None
    for name in ("before", "after", "before", "after"):
        mix.stackable = stackable if name == "after" else (lambda solver: None)
        unc.BATCHED_HESSIAN = name == "after"
        unc._LAPLACE.clear()
        start = time.process_time()
        band = mixture.band(result, measurements, times)
        cpu = time.process_time() - start
        line = (
            f"{name}: band CPU {cpu:.2f} s; coverage {band.coverage(truth):.4f}; "
            f"width {band.mean_width():.3f}; {band.n_failed} draws blew up; "
            f"unbounded from {band.unbounded_from()}; {len(band.components)} structures"
        )
        if name == "before":
            ref = band
        else:
            same = all(
                np.array_equal(getattr(band, k), getattr(ref, k), equal_nan=True) for k in ENDS
            )
            line += f"; identical to before: {same}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
