"""What the uncertainty (distill.uq, ude/uq) adds to `python train.py` on the default example:
the CPU time of the run without it (distill.uq=none) and with the defaults, each a fresh
process, and the stage timings each run wrote. Printed, not asserted (issue 15's target: the
uncertainty adds at most 30 s on 2 cores).

    python bench/uq_cost.py [out_dir]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(overrides: list[str], run_dir: Path) -> tuple[float, float, dict]:
    """User+system CPU seconds and wall seconds of one train.py run, and its metrics."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "train.py", f"hydra.run.dir={run_dir}", "logger=none", *overrides],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, json.loads((run_dir / "metrics.json").read_text())


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    cpu_off, wall_off, _ = run(["distill.uq=none"], out / "none")
    cpu_on, wall_on, metrics = run([], out / "uq")
    d = metrics["distill"]
    print(f"train.py distill.uq=none: {cpu_off:.1f} s CPU, {wall_off:.1f} s wall")
    print(f"train.py (defaults):      {cpu_on:.1f} s CPU, {wall_on:.1f} s wall")
    print(f"added by the uncertainty: {cpu_on - cpu_off:.1f} s CPU (target: at most 30 s)")
    horseshoe = d.get("uq", {}).get("seconds")
    band = d.get("timings", {}).get("predictive_band_seconds")
    print(f"  horseshoe {horseshoe} s wall, structure-averaged band {band} s wall")
    for t, e in d.get("uq", {}).get("targets", {}).items():
        print(f"  {t}: R-hat {e['max_rhat']}, ESS {e['min_ess']}, {e['seconds']} s")


if __name__ == "__main__":
    main()
