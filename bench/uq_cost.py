"""What the uncertainty (distill.uq, ude/uq) adds to `python train.py` on the default example:
the CPU time of the run without it (distill.uq=none) and with it (distill.uq.enabled=true: the
default settings), each a fresh process, alternated `repeats` times; the CPU time of the
uncertainty's own stages each run measured in-process (the horseshoe, the structure-averaged
predictive band, the coefficients' intervals: immune to other processes on a shared machine);
and the horseshoe's convergence. Printed, not asserted (issue 15's target: the uncertainty
adds at most 30 s on 2 cores).

    python bench/uq_cost.py [out_dir] [repeats]
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(overrides: list[str], run_dir: Path) -> tuple[float, float, dict]:
    """User+system CPU seconds and wall seconds of one train.py run, and its distill.json."""
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
    return cpu, wall, json.loads((run_dir / "distill.json").read_text())


def stages(d: dict) -> dict[str, float]:
    """CPU seconds of the uncertainty's stages in one run's distill.json."""
    timings = d.get("timings", {})
    return {
        "horseshoe": d.get("uq", {}).get("cpu_seconds", float("nan")),
        "predictive band": timings.get("predictive_band_cpu_seconds", float("nan")),
        "coefficient intervals": timings.get("credible_intervals_cpu_seconds") or float("nan"),
        # with uq on, the structure bootstrap; off, the distiller's rescoring (about 0.2 s)
        "bootstrap": timings.get("bootstrap_cpu_seconds", float("nan")),
    }


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    off, on, last = [], [], {}
    for k in range(repeats):
        off.append(run(["distill.uq=none"], out / f"none{k}")[:2])
        cpu, wall, last = run(["distill.uq.enabled=true"], out / f"uq{k}")
        on.append((cpu, wall))
        print(f"run {k}: off {off[-1][0]:.1f} s CPU, on {cpu:.1f} s CPU; stages {stages(last)}")
    cpu_off = statistics.median(c for c, _ in off)
    cpu_on = statistics.median(c for c, _ in on)
    print(f"train.py distill.uq=none:            {cpu_off:.1f} s CPU (median of {repeats})")
    print(f"train.py distill.uq.enabled=true:    {cpu_on:.1f} s CPU")
    print(f"added by the uncertainty (processes): {cpu_on - cpu_off:.1f} s CPU (target: 30 s)")
    s = stages(last)
    print(
        "added by the uncertainty (its stages, last run): "
        f"{sum(s.values()):.1f} s CPU = " + ", ".join(f"{name} {v:.1f} s" for name, v in s.items())
    )
    uq = last.get("uq", {})
    for t, e in uq.get("targets", {}).items():
        top = list(e["terms"].items())[:3]
        terms = ", ".join(
            f"{name}: inclusion {v['inclusion']:.3f}, R-hat {v['rhat']:.4f}, ESS {v['ess']:.0f}"
            f"/{v['tail_ess']:.0f}"
            for name, v in top
        )
        print(
            f"  {t}: max R-hat {e['max_rhat']}, min ESS (bulk or tail) {e['min_ess']}, "
            f"tau R-hat {e['tau_rhat']}; {terms}"
        )
    for w in uq.get("warnings", []):
        print(f"  warning: {w}")
    band = last.get("predictive_band", {})
    print(
        f"  predictive band: {band.get('n_failed')} of {band.get('n_samples')} draws blew up; "
        f"unbounded from {band.get('unbounded_from')}; coverage of the truth "
        f"{band.get('coverage_of_truth')}"
    )


if __name__ == "__main__":
    main()
