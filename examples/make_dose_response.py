"""Write the dose-response example under data/dose_response/ from the zoo's ground truth.

Four doses (1, 3, 10, 30, as initial drug levels in the conditions table); the response R is
sampled at irregular times with Gaussian noise (sd 0.1, 2-4 % of R); the 10-dose condition
misses its 3 h, 4 h and 10 h samples (empty cells), and the 30-dose condition has two
replicates at 1 h and 2 h. The drug level D is never measured.

    python examples/make_dose_response.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import yaml

from ude.spec.simulate import simulate_spec
from ude.systems import get_system

OUT = Path(__file__).resolve().parents[1] / "data" / "dose_response"
DOSES = {"dose_1": 1.0, "dose_3": 3.0, "dose_10": 10.0, "dose_30": 30.0}
TIMES = [0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0]
EXTRA_TIMES = {"dose_30": [1.5, 5.0]}  # denser sampling where the response moves fastest
MISSING = {"dose_10": [3.0, 4.0, 10.0]}
REPLICATES = {"dose_30": [1.0, 2.0]}
NOISE_SD = 0.1
BASELINE = 5.0  # kin / kout: the response at steady state before the dose


def main(seed: int = 0) -> None:
    system = get_system("dose_response")
    rng = np.random.default_rng(seed)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, dose in DOSES.items():
        times = np.array(sorted(TIMES + EXTRA_TIMES.get(name, [])))
        states = simulate_spec(system.truth, np.array([[dose, BASELINE]]), times)[0]
        for t, r in zip(times, states[:, 1], strict=True):
            n = 2 if t in REPLICATES.get(name, []) else 1
            for _ in range(n):
                value = r + NOISE_SD * rng.standard_normal()
                cell = "" if t in MISSING.get(name, []) else f"{value:.4f}"
                rows.append([name, f"{t:g}", cell])
    with (OUT / "measurements.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["condition", "time", "R"])
        w.writerows(rows)
    with (OUT / "conditions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["condition", "init_D"])
        w.writerows([[name, f"{dose:g}"] for name, dose in DOSES.items()])
    spec = system.known.to_dict()
    spec["name"] = "dose_response"
    text = (
        "# Indirect response to a drug bolus: elimination and turnover known, the drug effect\n"
        "# on R left to a network that sees only the drug level D (latent, D(0) = dose).\n"
    )
    (OUT / "model.yaml").write_text(text + yaml.safe_dump(spec, sort_keys=False))
    print(f"wrote {OUT}/measurements.csv, conditions.csv, model.yaml")


if __name__ == "__main__":
    main()
