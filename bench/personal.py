"""Personal twins on the virtual-population example: the issue's targets, printed from real runs.

    python bench/personal.py                       # trains the example (or resumes it) first
    python bench/personal.py outputs/<day>/<time>  # a finished virtual_population run
    python bench/personal.py RUN --figures docs/images   # also the README's pictures

Without a run directory the example is trained exactly as a user trains it,
``python train.py experiment=virtual_population hydra.run.dir=<--train-into>``; a killed
training resumes when the script runs again (train.py resumes a run directory that has a
checkpoint), and a finished one is reused.

What is measured (data/virtual_population/, examples/make_virtual_population.py):

* the held-out patient personalised from their first 3 samples (new_patient.csv, 1, 2 and 4 h
  after the first dose) forecasts the rest of their series (new_patient_full.csv after 4 h:
  11 sampling times over the 4 doses) with NMSE (each observable's mean squared error over
  the variance of its measurements there, averaged over C and R), against
  (a) the same twin personalised from the patient's whole series (16 times), which must be
  within 2x, and (b) the population-median prediction (the twin's typical subject: median
  parameters, the median fitted initial states, the same doses), which must be >= 5x worse;
  the NMSE against the noise-free truth (truth.json) is printed beside it;
* the population: the fitted median and spread of kel and of the discovered effect's
  individual coefficient against the 30 patients' own (truth.json ``sample``) and the
  generating population (``population``), within 15 %;
* speed on 2 threads: ``Twin.personalise`` and ``Twin.simulate`` (400 times, a band of 200
  draws) in this process (wall and CPU seconds, the best of 3 after a first call), and the
  commands ``python -m ude.personalise`` / ``python -m ude.simulate`` as a user runs them
  (wall and CPU seconds of the whole process, Python's start and imports included, and the
  fit's or the simulation's own seconds they print). Targets: personalise <= 5 s, simulate
  <= 1 s. On a shared machine the wall times are inflated; the CPU times are not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ude, not an installed one
DATA = ROOT / "data" / "virtual_population"
EARLY_END = 4.0  # the last of the three early samples (h)
THREADS = 2


def train(run: Path) -> dict[str, float]:
    """Train the example into ``run`` (resuming a killed run); wall and CPU seconds."""
    cmd = [sys.executable, "train.py", "experiment=virtual_population", f"hydra.run.dir={run}"]
    print("training:", " ".join(cmd[1:]), flush=True)
    return run_timed(cmd, log=run.parent / f"{run.name}.log")


def run_timed(cmd: list[str], log: Path | None = None) -> dict[str, float]:
    """Run ``cmd`` from the repository root on THREADS threads; its wall and CPU seconds and
    its output."""
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "stdout": proc.stdout}


def nmse(predicted: dict[str, np.ndarray], observed: dict[str, np.ndarray]) -> float:
    """Mean over observables of the mean squared error over the variance of the observed
    values (NaN entries left out)."""
    out = []
    for name, y in observed.items():
        ok = np.isfinite(y)
        out.append(np.mean((predicted[name][ok] - y[ok]) ** 2) / np.var(y[ok]))
    return float(np.mean(out))


def series(m, after: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The first condition's sampling times after ``after`` and its measurements there (the
    replicates' mean)."""
    keep = (m.times > after) & m.mask[0].any(axis=(1, 2))
    values = np.nanmean(m.values[0][keep], axis=1)
    return m.times[keep], {o: values[:, j] for j, o in enumerate(m.observables)}


def at(table, times: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    rows = table.set_index("time").loc[times]
    return {n: rows[n].to_numpy() for n in names}


def true_series(times: np.ndarray, truth: dict, twin) -> dict[str, np.ndarray]:
    """The held-out patient's noise-free C and R (the generating model, truth.json)."""
    from ude.spec import ModelSpec, simulate_spec

    values = {**truth["fixed"], **truth["new_patient"]}
    spec = ModelSpec.from_dict(
        {
            "states": ["A", "R"],
            "parameters": values,
            "observables": {"C": "A/V"},
            "equations": {"A": "-kel*A", "R": "kin - kout*R - Emax*(A/V)/(EC50 + A/V)"},
        }
    )
    doses = twin.conditions[0].doses
    grid = np.union1d([0.0], times)
    states = simulate_spec(spec, np.array([[0.0, 5.0]]), grid, doses=[doses])[0]
    keep = np.isin(grid, times)
    return {"C": states[keep, 0] / values["V"], "R": states[keep, 1]}


def truth_twin(conditions) -> object:
    """The generating model as a twin (the oracle): kel and the effect's coefficient ``E``
    (``-Emax``, in ``E*A/(A + V*EC50)``) individual under the true lognormal populations, each
    of ``conditions`` (:class:`~ude.twin.twin.TwinCondition` named p01..p30: their initial
    states, bands and doses) with its patient's true values, the true noise levels."""
    from dataclasses import replace

    from ude.spec import ModelSpec
    from ude.spec.model_spec import Parameter
    from ude.twin import Twin

    truth = json.loads((DATA / "truth.json").read_text())
    fixed, population = truth["fixed"], truth["population"]
    k_effect = fixed["V"] * fixed["EC50"]
    spec = ModelSpec.from_dict(
        {
            "states": ["A", "R"],
            "parameters": {"kel": 0.2, "E": -0.8} | {k: fixed[k] for k in ("V", "kin", "kout")},
            "observables": {"C": "A/V"},
            "equations": {"A": "-kel*A", "R": f"kin - kout*R + E*A/(A + {k_effect:g})"},
        }
    )
    params = dict(spec.parameters)
    for name, true, sign in (("kel", "kel", 1.0), ("E", "Emax", -1.0)):
        params[name] = Parameter(
            sign * population[true]["median"],
            learn=True,
            per_condition=True,
            population="lognormal",
            spread=population[true]["spread"],
            values=tuple(sign * truth["patients"][c.name][true] for c in conditions),
        )
    spec = replace(spec, parameters=params, initial={"A": 0.0, "R": fixed["kin"] / fixed["kout"]})
    return Twin(spec, conditions, ["C", "R"], dict(truth["noise"]), 0.0, "dopri5", t_end=48.0)


def replace_values(personal, values: dict[str, float]):
    """A copy of the oracle's personal twin with the true ``kel`` and ``Emax`` and the true
    initial response (kin/kout)."""
    import copy
    from dataclasses import replace

    out = copy.deepcopy(personal)
    params = dict(out.spec.parameters)
    params["kel"] = replace(params["kel"], values=(values["kel"],))
    params["E"] = replace(params["E"], values=(-values["Emax"],))
    out.spec = replace(out.spec, parameters=params)
    out.conditions[0].initial = {**out.conditions[0].initial, "R": out.spec.initial["R"]}
    return out


def best_of(fn, n: int = 3) -> tuple[float, float]:
    """The best wall and CPU seconds of ``n`` calls of ``fn``."""
    walls, cpus = [], []
    for _ in range(n):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def effect_terms(twin) -> list[str]:
    """dR/dt's terms that depend on the drug amount A (the discovered effect)."""
    import sympy as sp

    rhs = sp.expand(sp.sympify(twin.to_dict()["equations"]["R"]))
    return [str(t) for t in sp.Add.make_args(rhs) if sp.Symbol("A") in t.free_symbols]


def effect_parameter(twin) -> tuple[str | None, float, float]:
    """The discovered effect's individual coefficient ``c``, its constant ``K`` and the factor
    ``f`` when dR/dt's one term in A is ``c*f*A/(A + K)`` with ``c`` individual (the true
    effect's form, whose maximal effect is ``Emax = -c*f``, true when K = V*EC50 = 20 mg);
    else (None, nan, nan): a twin whose effect is a sum of terms has no one Emax to compare."""
    import sympy as sp

    from ude.spec.model_spec import load_spec

    known = set(load_spec(DATA / "model.yaml").parameters)
    a = sp.Symbol("A")
    rhs = sp.expand(sp.sympify(twin.to_dict()["equations"]["R"]))
    if len(effect_terms(twin)) != 1:
        return None, float("nan"), float("nan")
    for name in twin.individual:
        c = sp.Symbol(name)
        if name in known:
            continue
        for term in sp.Add.make_args(rhs):
            if c not in term.free_symbols:
                continue
            num, den = sp.fraction(sp.together(term / c))
            ratio = sp.simplify(num / a)
            if ratio.is_number and den.is_polynomial(a) and sp.degree(den, a) == 1:
                lead, k = den.coeff(a, 1), den.coeff(a, 0)
                if k.is_number and float(k / lead) > 0:
                    return name, float(k / lead), float(ratio / lead)
    return None, float("nan"), float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", help="a finished virtual_population run directory")
    parser.add_argument(
        "--train-into",
        default=str(ROOT / "outputs" / "bench_personal"),
        help="where to train the example without a run (a second call resumes or reuses it)",
    )
    parser.add_argument("--figures", help="write the README's pictures into this folder")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)

    from ude.data.tables import read_measurements
    from ude.twin import Twin

    run = Path(args.run or args.train_into).resolve()
    if not (run / "twin.json").is_file():
        if args.run:
            sys.exit(f"{run}: no twin.json (not a finished run)")
        took = train(run)
        print(f"trained and distilled in {took['wall']:.0f} s wall, {took['cpu']:.0f} s CPU")
    print(f"run: {run}")
    twin = Twin.load(run)
    truth = json.loads((DATA / "truth.json").read_text())
    print("twin:", "; ".join(f"d{s}/dt = {e}" for s, e in twin.to_dict()["equations"].items()))

    # -- the held-out patient ------------------------------------------------------------------
    early, full = DATA / "new_patient.csv", DATA / "new_patient_full.csv"
    extra = dict(conditions=DATA / "new_patient_conditions.csv")
    doses = DATA / "new_patient_doses.csv"
    few = twin.personalise(early, doses=doses, **extra)
    whole = twin.personalise(full, doses=doses, **extra)
    data = read_measurements(full, twin.spec, doses=doses, **extra)
    times, observed = series(data, EARLY_END)
    names = list(observed)
    grid = np.union1d(np.linspace(0, 60, 481), times)
    forecasts = {
        "personal (3 samples)": few.simulate(grid),
        "whole series": whole.simulate(grid, band=False),
        "population median": twin.simulate(
            grid, initial={"A": 0.0}, doses=list(few.conditions[0].doses)
        ),
    }
    true = true_series(times, truth, few)
    scores = {k: nmse(at(t, times, names), observed) for k, t in forecasts.items()}
    vs_truth = {k: nmse(at(t, times, names), true) for k, t in forecasts.items()}
    print(f"\nheld-out patient, forecast of the {len(times)} samples after {EARLY_END:g} h:")
    effect, k_effect, factor = effect_parameter(twin)
    emax = (lambda who, c: -factor * who.values(c)[effect]) if effect else None
    print(f"  {'twin':<24}{'NMSE (data)':>12}{'NMSE (truth)':>14}{'kel':>8}{'Emax':>8}")
    for k in forecasts:
        who = {"personal (3 samples)": few, "whole series": whole}.get(k, twin)
        c = 0 if who is not twin else None
        shown = f"{who.values(c)['kel']:>8.3f}" + (f"{emax(who, c):>8.3f}" if emax else "")
        print(f"  {k:<24}{scores[k]:>12.4f}{vs_truth[k]:>14.4f}{shown}")
    new = truth["new_patient"]
    print(f"  {'truth':<50}{new['kel']:>8.3f}{new['Emax']:>8.3f}")
    a = scores["personal (3 samples)"] / scores["whole series"]
    b = scores["population median"] / scores["personal (3 samples)"]
    verdict = {True: "met", False: "SHORT"}
    print(f"  target (a) personal / whole series = {a:.2f} (<= 2): {verdict[a <= 2]}")
    print(f"  target (b) population median / personal = {b:.1f} (>= 5): {verdict[b >= 5]}")

    # -- the oracle: where the gap comes from -----------------------------------------------------
    oracle = truth_twin(twin.conditions)
    o_few = oracle.personalise(early, doses=doses, **extra)
    o_whole = oracle.personalise(full, doses=doses, **extra)
    o_true = replace_values(o_whole, truth["new_patient"])
    print("\noracle: the generating model and populations (truth.json), the run's initial states:")
    print(f"  {'held-out patient':<24}{'NMSE (data)':>12}{'NMSE (truth)':>14}{'kel':>8}{'Emax':>8}"
          f"{'R(0)':>8}")  # fmt: skip
    o_scores = {}
    for k, who in (("true values", o_true), ("MAP, 3 samples", o_few), ("MAP, whole", o_whole)):
        table = who.simulate(grid, band=False)
        o_scores[k] = nmse(at(table, times, names), observed)
        v = who.values(0)
        print(
            f"  {k:<24}{o_scores[k]:>12.4f}{nmse(at(table, times, names), true):>14.4f}"
            f"{v['kel']:>8.3f}{-v['E']:>8.3f}{who.conditions[0].initial['R']:>8.3f}"
        )
    print(
        f"  MAP 3 samples / MAP whole = {o_scores['MAP, 3 samples'] / o_scores['MAP, whole']:.2f}"
        f"; true values / MAP whole = {o_scores['true values'] / o_scores['MAP, whole']:.2f}"
    )

    # -- the population ------------------------------------------------------------------------
    print("\npopulation (fitted vs the 30 patients' own / the generating population):")
    population = twin.population()
    if effect:
        print(
            f"  the effect: {effect}*{factor:.4g}*A/(A + {k_effect:.4g}) (truth: -Emax*A/(A + 20))"
        )
    else:
        terms = effect_terms(twin)
        print(
            f"  the discovered effect is not one term c*A/(A + K) with c individual: dR/dt's "
            f"{len(terms)} term(s) in A are {' + '.join(terms)} (truth: -Emax*A/(A + 20)); "
            "its Emax is not compared"
        )
    fitted = {"kel": population.get("kel")}
    if effect and effect in population:
        pop = population[effect]
        fitted["Emax"] = {"median": -factor * pop["median"], "spread": pop["spread"]}
    worst = 0.0 if effect else np.inf
    for name, pop in fitted.items():
        if pop is None:
            print(f"  {name}: no population in the twin")
            worst = np.inf
            continue
        for what in ("median", "spread"):
            sample = truth["sample"][name][what]
            generating = truth["population"][name][what]
            err = pop[what] / sample - 1
            worst = max(worst, abs(err))
            print(
                f"  {name:<5}{what:<7}{pop[what]:8.4f}   vs {sample:.4f} ({err:+.1%}) / "
                f"{generating:.4f} ({pop[what] / generating - 1:+.1%})"
            )
    largest = f"largest {worst:.1%}" if np.isfinite(worst) else "the effect not compared"
    print(f"  target: every error within 15 %: {verdict[worst <= 0.15]} ({largest})")

    # -- speed -----------------------------------------------------------------------------------
    print(f"\nspeed on {THREADS} threads (shared machine: wall times inflated, CPU times not):")
    t_end = float(forecasts["personal (3 samples)"]["time"].iloc[-1])
    plan = np.linspace(0, t_end, 400)
    w, c = best_of(lambda: twin.personalise(early, doses=doses, **extra))
    print(f"  Twin.personalise (3 samples):     {w:.2f} s wall, {c:.2f} s CPU (target <= 5 s)")
    w2, c2 = best_of(lambda: few.simulate(plan))
    print(f"  Twin.simulate (400 times, band):  {w2:.2f} s wall, {c2:.2f} s CPU (target <= 1 s)")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        copy.mkdir()
        shutil.copy(run / "twin.json", copy / "twin.json")
        cmd = [
            sys.executable,
            "-m",
            "ude.personalise",
            str(copy),
            f"data.path={early}",
            f"data.conditions={extra['conditions']}",
            f"data.doses={doses}",
            "--name",
            "me",
        ]
        p = run_timed(cmd)
        fit = json.loads((copy / "personal" / "me" / "fit.json").read_text())["fit"]
        print(
            f"  python -m ude.personalise:        {p['wall']:.2f} s wall, {p['cpu']:.2f} s CPU "
            f"(the fit itself {fit['seconds']:.2f} s wall, {fit['cpu_seconds']:.2f} s CPU)"
        )
        cmd = [
            sys.executable,
            "-m",
            "ude.simulate",
            str(copy / "personal" / "me"),
            f"doses={doses}",
            "t_end=60",
            "--name",
            "what_if",
        ]
        s = run_timed(cmd)
        own = re.search(r"in ([0-9.]+) s", s["stdout"])
        print(
            f"  python -m ude.simulate:           {s['wall']:.2f} s wall, {s['cpu']:.2f} s CPU "
            f"(the simulation itself {own.group(1) if own else '?'} s wall)"
        )
    print(
        f"  targets (the calls, warm): personalise {verdict[w <= 5]}, simulate {verdict[w2 <= 1]}"
    )

    if args.figures:
        figures(
            Path(args.figures), twin, forecasts, data, early, extra, doses, truth, effect, factor
        )


def figures(folder, twin, forecasts, data, early, extra, doses, truth, effect, factor) -> None:
    """virtual_population_personal.png (the held-out patient's forecasts) and
    virtual_population_recovery.png (each patient's fitted values against the truth)."""
    from ude.data.tables import read_measurements
    from ude.plots import _save, plt
    from ude.twin.plots import plot_simulation

    folder.mkdir(parents=True, exist_ok=True)
    fitted = read_measurements(early, twin.spec, doses=doses, dose_horizon=np.inf, **extra)
    rest = data.starting_at(0.0)
    keep = ~np.isin(rest.times, fitted.times)
    rest.values = np.where(keep[None, :, None, None], rest.values, np.nan)
    path = plot_simulation(
        forecasts["personal (3 samples)"],
        folder / "virtual_population_personal.png",
        ["C", "R"],
        "held-out patient: personal twin from 3 early samples",
        fitted=fitted,
        compared=rest,
        condition="new",
        extra={k: v for k, v in forecasts.items() if k != "personal (3 samples)"},
    )
    print(f"wrote {path}")
    pairs = [("kel", "kel", 1.0)] + ([(effect, "Emax", -factor)] if effect else [])
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.6 * len(pairs), 3.2), layout="constrained")
    axes = np.atleast_1d(axes)
    for ax, (name, true_name, scale) in zip(axes, pairs, strict=True):
        true = np.array([truth["patients"][c.name][true_name] for c in twin.conditions])
        found = scale * np.array([twin.values(c.name)[name] for c in twin.conditions])
        ax.plot(true, found, "o", ms=4, color="tab:blue", label="patients")
        lo, hi = min(true.min(), found.min()), max(true.max(), found.max())
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, label="fitted = true")
        ax.set_xlabel(f"true {true_name}")
        ax.set_ylabel(f"fitted {true_name}" + (f" (from {name})" if name != true_name else ""))
        ax.set_title(f"{len(true)} patients", fontsize=10)
    axes[0].legend(fontsize=8)
    path = _save(fig, folder / "virtual_population_recovery.png")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
