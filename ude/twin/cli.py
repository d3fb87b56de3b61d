"""The twin's commands: ``python -m ude.personalise`` and ``python -m ude.simulate``.

Both take a twin (a run directory, a folder with a twin.json, or a twin.json) and
``key=value`` settings; errors a user can cause are one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ude.errors import UdeError

PERSONALISE_KEYS = {
    "data.path": "the new subjects' measurements (CSV, the training data's format)",
    "data.conditions": "their conditions table (inputs, init_<state>), optional",
    "data.doses": "their dosing table (condition, time, state, amount[, duration]), optional",
    "t_end": "end of the forecast (default: the later of the twin's data and the doses)",
    "n_times": "forecast points (default 400)",
}
SIMULATE_KEYS = {
    "condition": "a condition of the twin (default: its only one, else a typical subject)",
    "initial.<state>": "an initial state",
    "inputs.<input>": "an input",
    "doses": "a dosing table (CSV; 'none' for no doses); default: the condition's",
    "t_end": "end time (default: the twin's data's end, or the last dose + its interval)",
    "t_start": "first output time (default: the twin's start)",
    "n_times": "output points (default 400)",
    "band": "true/false: the band (default true)",
    "level": "the band's probability (default 0.95)",
    "n_draws": "the band's draws (default 200)",
    "seed": "the draws' seed (default 0)",
}


def parse_settings(items: list[str], allowed: dict[str, str]) -> dict[str, str]:
    """``key=value`` items as a dict; a key not in ``allowed`` (``prefix.<name>`` allows any
    name under ``prefix``) is one clear error."""
    out = {}
    prefixes = [k.split("<")[0] for k in allowed if "<" in k]
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UdeError(f"'{item}' is not key=value", source="command line")
        if key not in allowed and not any(key.startswith(p) and key != p for p in prefixes):
            raise UdeError(
                f"unknown setting '{key}'",
                source="command line",
                fix="settings: " + ", ".join(allowed),
            )
        out[key] = value
    return out


def _number(settings: dict[str, str], key: str, default: float | None) -> float | None:
    if key not in settings:
        return default
    try:
        return float(settings[key])
    except ValueError:
        raise UdeError(f"expected a number, got '{settings[key]}'", source=key) from None


def _count(settings: dict[str, str], key: str, default: int) -> int:
    value = _number(settings, key, default)
    if value is None or value != int(value) or value < 2:
        raise UdeError(f"expected a whole number >= 2, got '{settings[key]}'", source=key)
    return int(value)


def _flag(settings: dict[str, str], key: str, default: bool) -> bool:
    value = settings.get(key, str(default)).lower()
    if value not in {"true", "false"}:
        raise UdeError(f"expected true or false, got '{settings[key]}'", source=key)
    return value == "true"


def _parser(prog: str, what: str, keys: dict[str, str], example: str) -> argparse.ArgumentParser:
    lines = "\n".join(f"  {k:<18} {v}" for k, v in keys.items())
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} <twin> [key=value ...] [--name NAME]",
        description=f"{what}\n\n<twin>: a run directory, a folder with a twin.json (a "
        "re-distillation, a personal twin) or a twin.json.\n\nsettings:\n" + lines,
        epilog=f"example: {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("twin", nargs="?", help="the twin")
    parser.add_argument("settings", nargs="*", metavar="key=value")
    parser.add_argument("--name", help="the output folder's name (default: from the input)")
    return parser


def _folder(parent: Path, name: str) -> Path:
    if not name or Path(name).name != name or name in {".", ".."}:
        raise UdeError(f"'{name}' is not a folder name", source="--name")
    out, n = parent / name, 1
    while out.exists():
        n += 1
        out = parent / f"{name}_{n}"
    return out


def _twin_folder(path: Path) -> Path:
    return path.parent if path.is_file() else path


def _horizon(twin, doses: list[dict[str, Any]], data_end: float) -> float:
    """The later of the twin's data, ``data_end`` and a dosing interval past the last dose."""
    t_end = max(twin.t_end if twin.t_end is not None else twin.t0, data_end)
    times = sorted({d["time"] + d["duration"] for d in doses} | {d["time"] for d in doses})
    if times:
        gaps = np.diff(times)
        t_end = max(t_end, times[-1] + (float(gaps.max()) if len(gaps) else 0.0))
    return t_end if t_end > twin.t0 else twin.t0 + 1.0


# -- personalise -------------------------------------------------------------------------------
def personalise_main(argv: list[str] | None = None, prog: str = "python -m ude.personalise"):
    """Personalise a twin for new subjects; returns the personal twin."""
    parser = _parser(
        prog,
        "Personalise a twin for new subjects (patients) from a few measurements: their "
        "individual parameters and initial states by MAP under the twin's population, the "
        "structure and the population held. Writes <twin>/personal/<name>/: the personal twin "
        "(twin.json, equations.md, twin.sbml), fit.json, individual.csv (values with 95 % "
        "intervals), forecast.csv and forecast.png (with the band).",
        PERSONALISE_KEYS,
        f"{prog} outputs/<day>/<time> data.path=new_patient.csv data.doses=new_doses.csv",
    )
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    if args.twin is None:
        parser.error("give the twin: a run directory, or a folder with a twin.json")
    settings = parse_settings(args.settings, PERSONALISE_KEYS)
    # torch and the plots load once the command line is read (--help answers without them)
    from ude.data.tables import read_measurements
    from ude.twin.plots import plot_simulation
    from ude.twin.twin import Twin

    if "data.path" not in settings:
        raise UdeError("no data.path", source="command line", fix="give data.path=<new.csv>")
    twin = Twin.load(args.twin)
    data = read_measurements(
        settings["data.path"],
        twin.spec,
        settings.get("data.conditions"),
        doses=settings.get("data.doses"),
        dose_horizon=_number(settings, "t_end", np.inf),  # doses planned past the data
    )
    out = _folder(
        _twin_folder(Path(args.twin)) / "personal", args.name or Path(settings["data.path"]).stem
    )
    personal = twin.personalise(data)
    personal.save(out)
    n_times = _count(settings, "n_times", 400)
    report: dict[str, Any] = {"fit": personal.fit, "subjects": {}}
    rows = []
    columns = list(data.observables)
    several = len(personal.conditions) > 1
    for i, c in enumerate(personal.conditions):
        doses = [d.to_row() for d in c.doses]
        t_end = _number(settings, "t_end", _horizon(twin, doses, float(data.times[-1])))
        table = personal.simulate(np.linspace(personal.t0, t_end, n_times), condition=c.name)
        values = personal.values(c.name)
        report["subjects"][c.name] = {
            "parameters": {k: values[k] for k in personal.individual},
            "initial": c.initial,
            "intervals": _intervals(c.band),
        }
        sampled = int(data.mask[i].any(axis=(1, 2)).sum())
        plot_simulation(
            table,
            out / "plots" / f"forecast_{c.name}.png" if several else out / "forecast.png",
            columns,
            f"personal twin of {c.name}, from {sampled} sampling times",
            fitted=data,
            condition=c.name,
        )
        table.insert(0, "condition", c.name)
        rows.append(table)
    import pandas as pd

    pd.concat(rows).to_csv(out / "forecast.csv", index=False)
    (out / "fit.json").write_text(json.dumps(report, indent=2, default=float))
    _individual_csv(report, out / "individual.csv")
    for name, entry in report["subjects"].items():
        values = ", ".join(f"{k} {v:.4g}" for k, v in entry["parameters"].items())
        print(f"{name}: {values} (fitted in {personal.fit['seconds']:.2f} s)")
    print(f"personal twin written to {out}/")
    return personal


def _intervals(band) -> dict[str, list[float]]:
    """95 % intervals of a condition's fitted entries (from its Gaussian)."""
    if band is None:
        return {}
    out = {}
    for i, name in enumerate(band.entries):
        sd = float(np.sqrt(max(band.covariance[i, i], 0.0)))
        lo, hi = band.mean[i] - 1.96 * sd, band.mean[i] + 1.96 * sd
        out[name] = [float(np.exp(lo)), float(np.exp(hi))] if band.log[i] else [lo, hi]
        out[name] = [float(x) for x in out[name]]  # repr of a numpy float is not a number
    return out


def _individual_csv(report: dict[str, Any], path: Path) -> None:
    lines = ["condition,parameter,value,lower_95,upper_95"]
    for name, entry in report["subjects"].items():
        values = {**entry["parameters"], **{f"{s}(0)": v for s, v in entry["initial"].items()}}
        for k, v in values.items():
            lo, hi = entry["intervals"].get(k, [float("nan")] * 2)
            lines.append(f"{name},{k},{v!r},{lo!r},{hi!r}")
    path.write_text("\n".join(lines) + "\n")


# -- simulate ----------------------------------------------------------------------------------
def simulate_main(argv: list[str] | None = None, prog: str = "python -m ude.simulate"):
    """Simulate a twin (what if: other doses, initial states, inputs); returns the table."""
    parser = _parser(
        prog,
        "Simulate a twin: a condition it was fitted on, a personal twin, or a typical "
        "subject, with other doses, initial states or inputs. Writes <twin>/simulate/<name>/"
        "simulation.csv (time, states, observables, the band's _lower/_upper columns) and "
        "simulation.png.",
        SIMULATE_KEYS,
        f"{prog} outputs/<day>/<time> condition=p03 doses=plan.csv t_end=96",
    )
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    if args.twin is None:
        parser.error("give the twin: a run directory, or a folder with a twin.json")
    settings = parse_settings(args.settings, SIMULATE_KEYS)
    from ude.twin.plots import plot_simulation
    from ude.twin.twin import Twin

    twin = Twin.load(args.twin)
    initial = {
        k.removeprefix("initial."): _number(settings, k, None)
        for k in settings
        if k.startswith("initial.")
    }
    inputs = {
        k.removeprefix("inputs."): _number(settings, k, None)
        for k in settings
        if k.startswith("inputs.")
    }
    condition = settings.get("condition")
    doses = settings.get("doses")
    doses = [] if doses is not None and doses.lower() == "none" else doses
    picked = twin._pick(condition)
    t_start = _number(settings, "t_start", twin.t0)
    t_end = _number(settings, "t_end", None)
    if t_end is None:
        if isinstance(doses, str):
            planned = _planned(doses)
        elif doses is None and picked is not None:
            planned = [d.to_row() for d in twin.conditions[picked].doses]
        else:
            planned = []
        t_end = _horizon(twin, planned, t_start)
    if not t_end > t_start:
        raise UdeError(f"t_end {t_end:g} is not after the start {t_start:g}", source="t_end")
    times = np.linspace(t_start, t_end, _count(settings, "n_times", 400))
    start = time.perf_counter()
    table = twin.simulate(
        times,
        condition=condition,
        initial=initial,
        inputs=inputs,
        doses=doses,
        band=_flag(settings, "band", True),
        level=_number(settings, "level", 0.95),
        n_draws=_count(settings, "n_draws", 200),
        seed=int(_number(settings, "seed", 0)),
    )
    seconds = time.perf_counter() - start
    name = args.name or time.strftime("%Y-%m-%d_%H-%M-%S")
    out = _folder(_twin_folder(Path(args.twin)) / "simulate", name)
    out.mkdir(parents=True)
    table.to_csv(out / "simulation.csv", index=False)
    # what the data measured (observables and measured states), else the spec's observables
    columns = [c for c in twin.observed if c in table] or list(twin.spec.observables)
    columns = columns or twin.states
    who = table.attrs["condition"] or "a typical subject"
    plot_simulation(table, out / "simulation.png", columns, f"{who}; band: {table.attrs['band']}")
    (out / "settings.json").write_text(
        json.dumps({"twin": str(args.twin), "settings": settings, **table.attrs}, indent=2)
    )
    unbounded = table.attrs.get("unbounded_from")
    if unbounded is not None:  # the band's draws blew up: say so, the plot shades it all
        failed, draws = table.attrs["n_failed"], table.attrs["n_draws"]
        print(
            f"the band is unbounded from t={unbounded:g}: {failed} of {draws} draws blew up "
            "by the end (more than the band leaves out)"
        )
    print(f"simulated {who} to t={t_end:g} in {seconds:.2f} s; written to {out}/")
    return table


def _planned(path: str) -> list[dict[str, Any]]:
    """The rows of a dosing table, read loosely for the default horizon (the twin reads it
    properly)."""
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [{"time": float(r["time"]), "duration": float(r.get("duration") or 0)} for r in rows]
    except (OSError, KeyError, ValueError):
        return []  # the twin's reader names what is wrong


def cli_personalise(prog: str = "ude-personalise") -> None:
    """Errors a user can cause print one line and exit with status 2."""
    from ude.errors import exit_2_on_user_errors

    with exit_2_on_user_errors():
        personalise_main(prog=prog)


def cli_simulate(prog: str = "ude-simulate") -> None:
    """Errors a user can cause print one line and exit with status 2."""
    from ude.errors import exit_2_on_user_errors

    with exit_2_on_user_errors():
        simulate_main(prog=prog)
