"""The structure bootstrap (ude/uq/structure_bootstrap.py) on finished Lotka-Volterra runs:
what model weight the true structure keeps where the data prefer a rival (issue 15's target:
>= 0.1 in the seeds where docs/recovery.md's oracle shows a rival beating the truth, 5, 8 and 9
at 5 % noise), beside the evidence weight it had without the bootstrap, and the bootstrap's
CPU time (measured in-process: immune to other processes on a shared machine).

Each run directory is a finished ``train.py`` run (e.g. made by ``bench/recovery.py --systems
lotka_volterra --noise 0.05 --seeds 10 --out DIR``, which leaves ``DIR/noise0.05_seed<k>``);
it is distilled again in this process with the run's own settings and ``distill.uq``'s
bootstrap (the default settings of ude/conf/distill/default.yaml unless overridden; its
resampling seeded with the run's seed, as ``train.py`` seeds it), nothing written to it.
Printed, not asserted.

    OMP_NUM_THREADS=1 python bench/structure_bootstrap.py RUN_DIR... [--set key=value ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRUTH = {"x": ("x*y",), "y": ("x*y",)}  # the missing terms of the default example


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--set", nargs="*", default=[], help="StructureBootstrap arguments")
    args = parser.parse_args()
    import yaml
    from hydra.utils import instantiate

    from ude.distill.cli import load_run, make_distiller
    from ude.distill.selection import evidence_weights

    node = yaml.safe_load((ROOT / "ude" / "conf" / "distill" / "default.yaml").read_text())
    settings = dict(node["uq"]["bootstrap"])
    settings.pop("seed")  # ${seed}: each run's own (below)
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = yaml.safe_load(value)
    print(f"bootstrap settings: {settings}")
    rows = []
    for run in args.runs:
        cfg, model, measurements, _ = load_run(run, ["distill.uq=none"])
        distiller = make_distiller(cfg.distill)
        # the resampling seeded as the run's own (``seed: ${seed}``), unless --set gives one
        distiller.bootstrap = instantiate({"seed": cfg.seed} | settings)
        start = time.process_time()
        result = distiller.fit(model, measurements)
        cpu = time.process_time() - start
        found = result.structure_bootstrap
        names = {t: [term.name for term in ts] for t, ts in result.terms.items()}

        def is_truth(support, names=names) -> bool:
            return all(tuple(names[t][j] for j in idx) == TRUTH[t] for t, idx in support)

        pairs = zip(result.path, evidence_weights(result.path), strict=True)
        evidence = sum(w for s, w in pairs if is_truth(s.candidate.support()))
        share = sum(v for k, v in found.share.items() if is_truth(k))
        weight = sum(v for k, v in found.weight.items() if is_truth(k))
        best = max(found.share, key=found.share.get)
        rival = "; ".join(f"{t}: {' + '.join(names[t][j] for j in idx)}" for t, idx in best)
        row = (
            f"{run.name:24s} chosen exact {is_truth(result.chosen.candidate.support())!s:5s} "
            f"truth: evidence {evidence:.3f}  bootstrap share {share:.3f}  "
            f"bootstrap weight {weight:.3f} | most chosen: {rival} "
            f"({found.share[best]:.2f}) | added refits {found.info['refits_added']}, "
            f"unscored {found.info['unscored_proposals']} | bootstrap CPU "
            f"{result.timings['bootstrap_cpu_seconds']:.1f} s of {cpu:.1f} s"
        )
        print(row, flush=True)
        rows.append(row)
    print("\n".join(["", *rows]))


if __name__ == "__main__":
    main()
