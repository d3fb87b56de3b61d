"""Write the virtual-population example under data/virtual_population/.

Thirty patients get a drug as an intravenous bolus of 100 mg every 12 h (4 doses). The drug
amount A (mg) in a central volume V = 10 L is eliminated at the patient's rate kel; its
concentration C = A/V is measured. It lowers a response R (a biomarker, baseline kin/kout = 5)
through an effect that saturates with the concentration, with the patient's maximal effect
Emax (the indirect-response model I of Dayneka, Garg & Jusko 1993):

    dA/dt = -kel * A                         (+ the doses)
    dR/dt = kin - kout * R - Emax * C / (EC50 + C)

kel and Emax vary between patients, lognormally: medians 0.2 /h and 0.8 /h, spreads 0.3 (sd of
the log, about 30 %). The 30 patients' random effects are a Latin hypercube over the normal
quantiles (each margin's sample median and spread then match the population's, so the example
checks recovery of the population rather than the luck of 30 draws); their pairing is random.
C and R are measured at 16 times over 48 h (a pre-dose baseline, peaks and troughs) with
Gaussian noise (sd 0.2 mg/L and 0.1). The prior knowledge (model.yaml) has the elimination with
kel individual under a lognormal population, the response's turnover, and a network for the
drug's effect on R, which sees A.

A new patient, held out: one standard deviation from the median in both (faster elimination,
kel = 0.27 /h; weaker effect, Emax = 0.59 /h). new_patient.csv has their first three samples
(1, 2 and 4 h after the first dose); new_patient_full.csv their whole series, for the
benchmark (bench/personal.py); new_patient_plan.csv a what-if dosing plan for them (50 mg
every 6 h). truth.json has every true value.

    python examples/make_virtual_population.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from scipy.stats import norm

from ude.data.doses import Dose, write_doses
from ude.spec import ModelSpec, simulate_spec

OUT = Path(__file__).resolve().parents[1] / "data" / "virtual_population"
N = 30
TIMES = [0, 0.5, 1, 2, 4, 8, 12, 13, 16, 24, 25, 30, 36, 37, 42, 48]
EARLY = [1, 2, 4]
DOSE, INTERVAL, N_DOSES = 100.0, 12.0, 4
NOISE = {"C": 0.2, "R": 0.1}
POPULATION = {"kel": (0.2, 0.3), "Emax": (0.8, 0.3)}  # median, spread (sd of the log)
NEW = {"kel": 1.0, "Emax": -1.0}  # the new patient's random effects, in spreads
FIXED = {"V": 10.0, "kin": 1.0, "kout": 0.2, "EC50": 2.0}

TRUTH = {
    "name": "virtual_population_truth",
    "states": ["A", "R"],
    "parameters": {"kel": 0.2, "Emax": 0.8, **FIXED},
    "observables": {"C": "A/V"},
    "equations": {"A": "-kel*A", "R": "kin - kout*R - Emax*(A/V)/(EC50 + A/V)"},
}
KNOWN = """\
# Virtual population (examples/make_virtual_population.py): the drug's elimination is known
# in form, with each patient's rate kel individual under a lognormal population (median and
# spread learned); the response's turnover is known; the drug's effect on R is left to a
# network that sees the drug amount A. Doses come from doses.csv.
name: virtual_population
states: [A, R]
parameters:
  kel: {value: 0.1, learn: true, per_condition: true, population: lognormal}
  V: 10.0
  kin: 1.0
  kout: 0.2
observables:
  C: A/V
equations:
  A: -kel*A
  R: kin - kout*R
neural:
  targets: [R]
  inputs: [A]
"""


def schedule() -> tuple[Dose, ...]:
    return tuple(Dose(k * INTERVAL, "A", DOSE) for k in range(N_DOSES))


def random_effects(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A Latin hypercube of standard normal quantiles, one column per parameter."""
    quantiles = norm.ppf((np.arange(N) + 0.5) / N)
    return {k: rng.permutation(quantiles) for k in POPULATION}


def simulate(values: dict[str, float], times: list[float], rng: np.random.Generator) -> list:
    spec = ModelSpec.from_dict({**TRUTH, "parameters": {**TRUTH["parameters"], **values}})
    states = simulate_spec(spec, np.array([[0.0, 5.0]]), np.array(times), doses=[schedule()])[0]
    c = states[:, 0] / FIXED["V"] + NOISE["C"] * rng.standard_normal(len(times))
    r = states[:, 1] + NOISE["R"] * rng.standard_normal(len(times))
    return [
        (t, round(float(x), 4), round(float(y), 4)) for t, x, y in zip(times, c, r, strict=True)
    ]


def write_table(path: Path, rows: list[tuple]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["condition", "time", "C", "R"])
        w.writerows(rows)


def main(seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    OUT.mkdir(parents=True, exist_ok=True)
    eta = random_effects(rng)
    patients = {}
    rows = []
    for i in range(N):
        name = f"p{i + 1:02d}"
        values = {k: m * float(np.exp(s * eta[k][i])) for k, (m, s) in POPULATION.items()}
        patients[name] = values
        rows += [(name, *r) for r in simulate(values, TIMES, rng)]
    write_table(OUT / "measurements.csv", rows)
    write_doses({p: schedule() for p in patients}, OUT / "doses.csv")
    with (OUT / "conditions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["condition", "init_A"])
        w.writerows([[p, 0] for p in patients])
    new = {k: m * float(np.exp(s * NEW[k])) for k, (m, s) in POPULATION.items()}
    series = [("new", *r) for r in simulate(new, TIMES, rng)]
    write_table(OUT / "new_patient_full.csv", series)
    write_table(OUT / "new_patient.csv", [r for r in series if r[1] in EARLY])
    write_doses({"new": schedule()}, OUT / "new_patient_doses.csv")
    # a what-if plan for them: half the dose twice as often (python -m ude.simulate ... doses=)
    plan = tuple(Dose(k * INTERVAL / 2, "A", DOSE / 2) for k in range(2 * N_DOSES))
    write_doses({"new": plan}, OUT / "new_patient_plan.csv")
    (OUT / "new_patient_conditions.csv").write_text("condition,init_A\nnew,0\n")
    (OUT / "model.yaml").write_text(KNOWN)
    truth = {
        "population": {k: {"median": m, "spread": s} for k, (m, s) in POPULATION.items()},
        "sample": {  # the 30 patients' own median and spread (sd of the log, n - 1)
            k: {
                "median": float(np.exp(np.median(np.log([v[k] for v in patients.values()])))),
                "spread": float(np.std(np.log([v[k] for v in patients.values()]), ddof=1)),
            }
            for k in POPULATION
        },
        "fixed": FIXED,
        "patients": patients,
        "new_patient": new,
        "noise": NOISE,
        "effect": "-Emax*C/(EC50 + C) = -Emax*A/(V*EC50 + A), V*EC50 = 20 mg",
    }
    (OUT / "truth.json").write_text(json.dumps(truth, indent=2))
    print(f"wrote {OUT}/")


if __name__ == "__main__":
    main()
