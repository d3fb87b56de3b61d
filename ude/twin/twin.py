"""The Twin: a finished run's symbolic model with its fitted values, the product's noun.

::

    twin = Twin.load("outputs/<day>/<time>")           # a run directory, or a twin.json
    table = twin.simulate(np.linspace(0, 48, 200), condition="p03", doses=[Dose(24, "A", 100)])
    me = twin.personalise("new_patient.csv", conditions="new_conditions.csv")
    me.simulate(np.linspace(0, 96, 400), doses="plan.csv")
    twin.to_sbml("p03.xml", condition="p03"); print(twin.equations())

A twin holds its symbolic spec (individual parameters as symbols, with their population and
each condition's own value), the conditions it was fitted on (initial states, inputs, doses
and the Gaussian of their fitted values), the observables' noise levels and the solver.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ude.data.doses import Dose, Schedule, read_doses
from ude.errors import UdeError
from ude.spec.model_spec import ModelSpec, Parameter
from ude.twin.band import Gaussian
from ude.twin.symbolic import equations_markdown, individual, twin_from_dict, twin_to_dict

if TYPE_CHECKING:
    import pandas as pd

    from ude.data.measurements import Measurements
    from ude.model.hybrid import HybridODE

FILE = "twin.json"


@dataclass
class TwinCondition:
    """A condition (patient) the twin was fitted on: its fitted ``initial`` states, its
    ``inputs``, its ``doses`` and the :class:`Gaussian` of its fitted values (``band``; None:
    not computed). Its individual parameters' values are in the twin's spec
    (``Parameter.values``, in the order of the twin's conditions)."""

    name: str
    initial: dict[str, float]
    inputs: dict[str, float] = field(default_factory=dict)
    doses: Schedule = ()
    band: Gaussian | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"initial": dict(self.initial), "inputs": dict(self.inputs)}
        out["doses"] = [d.to_row() for d in self.doses]
        if self.band is not None:
            out["band"] = self.band.to_dict()
        return out

    @classmethod
    def from_dict(cls, name: str, raw: dict[str, Any]) -> TwinCondition:
        return cls(
            name,
            {k: float(v) for k, v in raw.get("initial", {}).items()},
            {k: float(v) for k, v in raw.get("inputs", {}).items()},
            tuple(Dose(**d) for d in raw.get("doses", [])),
            Gaussian.from_dict(raw["band"]) if raw.get("band") else None,
        )


class Twin:
    """A symbolic twin with its fitted values (see the module docstring).

    Args:
        spec: the symbolic spec; individual parameters carry each condition's value
            (``Parameter.values``, in the order of ``conditions``) and their population.
        conditions: the conditions it was fitted on (or a personal twin's new subject).
        observed: the data's observables.
        noise: each observable's noise level (standard deviation), for personalisation.
        t0: the time where the initial states apply.
        t_end: the last time of the data it was fitted on (the default horizon of a forecast).
        solver: the ODE method (``dopri5``; a stiff twin's ``rodas5p``).
        extra: other twin.json content kept as it is (prior parameters, inclusion
            probabilities, the distillation's record).
    """

    def __init__(
        self,
        spec: ModelSpec,
        conditions: Sequence[TwinCondition] = (),
        observed: Sequence[str] = (),
        noise: dict[str, float] | None = None,
        t0: float = 0.0,
        solver: str = "dopri5",
        extra: dict[str, Any] | None = None,
        source: str | None = None,
        t_end: float | None = None,
    ):
        self.spec = spec
        self.conditions = list(conditions)
        self.observed = list(observed)
        self.noise = dict(noise or {})
        self.t0 = float(t0)
        self.t_end = None if t_end is None else float(t_end)
        self.solver = solver
        self.extra = dict(extra or {})
        self.source = source
        self.fit: dict[str, Any] | None = None  # a personalisation's record

    @classmethod
    def from_distillation(
        cls,
        twin: ModelSpec,
        model: HybridODE,
        known: ModelSpec,
        measurements: Measurements,
        covariance: np.ndarray | None = None,
        inclusion: dict[str, dict[str, float]] | None = None,
        solver: str = "dopri5",
    ) -> Twin:
        """The Twin a distillation produces: its refitted symbolic ``twin`` (per-condition
        values in ``Parameter.values``), the refitted ``model`` (initial states, noise levels),
        the prior spec ``known`` (whose parameters twin.json lists), the ``measurements`` it was
        refitted on (conditions, inputs, doses), the Laplace ``covariance`` of the refit's
        entries (each condition's band; None: none) and the inclusion probabilities."""
        from ude.twin.band import condition_gaussians

        bands = [None] * measurements.n_conditions
        if covariance is not None:
            bands = condition_gaussians(model, covariance)
        initial = model.initial.detach().cpu().numpy()
        conditions = [
            TwinCondition(
                name,
                {s: float(initial[c, i]) for i, s in enumerate(twin.states)},
                {
                    u: float(measurements.inputs[c, measurements.input_names.index(u)])
                    for u in twin.inputs
                },
                measurements.doses.get(name, ()),
                bands[c],
            )
            for c, name in enumerate(measurements.conditions)
        ]
        noise = model.noise.detach().cpu().tolist()
        extra: dict[str, Any] = {
            "parameters": {
                k: twin.parameters[k].value for k in known.parameters if k in twin.parameters
            }
        }
        if inclusion is not None:
            extra["inclusion_probability"] = inclusion
        return cls(
            twin,
            conditions,
            measurements.observables,
            dict(zip(model.observable_names, noise, strict=True)),
            float(measurements.times[0]),
            solver,
            extra,
            t_end=float(measurements.times[-1]),
        )

    # -- reading and writing -------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Twin:
        """The twin of a run directory (its twin.json), of a folder holding a twin.json (a
        re-distillation, a personal twin) or of a twin.json file."""
        path = Path(path)
        file = path / FILE if path.is_dir() else path
        if not file.is_file():
            raise UdeError(
                "no twin here" if path.is_dir() else "twin file not found",
                source=str(file),
                fix="give a run directory whose distillation wrote twin.json, or a twin.json",
            )
        try:
            raw = json.loads(file.read_text())
        except json.JSONDecodeError as err:
            raise UdeError(
                f"not valid JSON: {err.msg}", source=str(file), where=f"line {err.lineno}"
            ) from None
        return cls.from_dict(raw, source=str(file))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = FILE) -> Twin:
        spec = twin_from_dict(raw, source=source)
        conditions = [
            TwinCondition.from_dict(name, entry)
            for name, entry in (raw.get("conditions") or {}).items()
        ]
        own = {"conditions", "noise", "t0", "t_end", "solver", "individual", "population"}
        return cls(
            spec,
            conditions,
            raw.get("observed", []),
            raw.get("noise"),
            raw.get("t0", 0.0),
            raw.get("solver", "dopri5"),
            {k: v for k, v in raw.items() if k not in own},
            source,
            raw.get("t_end"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The twin.json content (:func:`ude.twin.symbolic.twin_to_dict`, with the conditions,
        the noise levels, ``t0`` and the solver)."""
        entries = {c.name: c.to_dict() for c in self.conditions}
        listed = {*self.extra.get("parameters", {}), *self.individual}
        known = replace(
            self.spec, parameters={k: p for k, p in self.spec.parameters.items() if k in listed}
        )
        own = twin_to_dict(
            self.spec,
            self.observed,
            known,
            self.extra.get("inclusion_probability"),
            conditions=entries or None,
        )
        out = {**self.extra, **own}
        out["parameters"] = {**self.extra.get("parameters", {}), **own["parameters"]}
        out.update(noise=dict(self.noise), t0=self.t0, t_end=self.t_end, solver=self.solver)
        return out

    def save(self, folder: str | Path) -> Path:
        """Write twin.json, equations.md, twin.sbml and, with individual parameters, one SBML
        file per condition (:meth:`write_sbml`) into ``folder``; returns twin.json's path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FILE).write_text(json.dumps(self.to_dict(), indent=2))
        (folder / "equations.md").write_text(self.equations())
        self.write_sbml(folder)
        return folder / FILE

    # -- views ---------------------------------------------------------------------------------
    @property
    def states(self) -> list[str]:
        return list(self.spec.states)

    @property
    def condition_names(self) -> list[str]:
        return [c.name for c in self.conditions]

    @property
    def individual(self) -> list[str]:
        """The individual parameters (each condition has its own value)."""
        return individual(self.spec)

    def population(self) -> dict[str, dict[str, Any]]:
        """Each population parameter's distribution, median (mean) and spread."""
        from ude.twin.symbolic import population_entry

        return {
            k: population_entry(p)
            for k, p in self.spec.parameters.items()
            if p.population is not None
        }

    def values(self, condition: str | int | None = None) -> dict[str, float]:
        """The parameter values of ``condition`` (its own individual values), or the typical
        values (a population's median) for None."""
        c = None if condition is None else self._index(condition)
        return {
            k: float(p.values[c]) if c is not None and p.values is not None else float(p.value)
            for k, p in self.spec.parameters.items()
        }

    def equations(self) -> str:
        """The twin in Markdown with LaTeX, with the individual parameters' table."""
        return equations_markdown(self.spec, self.spec, conditions=self.condition_names)

    # -- simulation ----------------------------------------------------------------------------
    def simulate(
        self,
        times: Sequence[float] | np.ndarray,
        condition: str | int | None = None,
        initial: dict[str, float] | None = None,
        inputs: dict[str, float] | None = None,
        doses: Sequence[Dose] | str | Path | None = None,
        band: bool = True,
        level: float = 0.95,
        n_draws: int = 200,
        seed: int = 0,
    ) -> pd.DataFrame:
        """The twin's states and observables at ``times``, with a band.

        Args:
            times: output times, at or after ``t0`` (where the initial states apply).
            condition: a condition of the twin (name or index): its own parameter values,
                fitted initial states, inputs and doses. None: the twin's only condition
                when it has one (a personal twin), else a typical subject (the population's
                median values; initial states and inputs the median over the conditions).
            initial, inputs: values that replace the condition's, by state and input name.
            doses: doses that replace the condition's: a list of :class:`Dose`, or a dosing
                table (CSV, ``condition`` column optional); ``[]`` for none.
            band: add ``<name>_lower`` and ``<name>_upper`` columns: the ``level`` band over
                ``n_draws`` draws of the condition's fitted values (their Laplace
                Gaussian; initial states given in ``initial`` held), or, for a typical
                subject, of individual values from the population (between-subject
                variability). The point prediction is at the fitted (median) values.

        Returns:
            A table with ``time`` and one column per state and observable (plus the band's);
            ``table.attrs`` says the condition, the band's kind and level, the draws, the
            failed draws and the first time from which the band is unbounded
            (``unbounded_from``: more than ``1 - level`` of the draws blew up; None: never).
        """
        import pandas as pd

        from ude.twin.simulator import Simulator

        times = np.asarray(times, dtype=float)
        if times.ndim != 1 or not len(times) or np.any(np.diff(times) <= 0):
            raise UdeError("expected increasing times", source="times")
        if times[0] < self.t0:
            raise UdeError(
                f"time {times[0]:g} is before the start {self.t0:g}, where the initial states "
                "apply",
                source="times",
            )
        c = self._pick(condition)
        y0 = self._initial(c, initial or {})
        u = self._inputs(c, inputs or {})
        schedule = self._doses(c, doses, float(times[-1]))
        values = self.values(None if c is None else c)
        names = list(self.spec.parameters)
        rows_p = [[values[k] for k in names]]
        rows_y = [[y0[s] for s in self.states]]
        kind, draws = "none", 0
        if band:
            kind, sampled = self._draws(c, set(initial or {}), n_draws, seed)
            draws = n_draws if sampled is not None else 0
            for i in range(draws):
                rows_p.append([sampled.get(k, np.full(n_draws, values[k]))[i] for k in names])
                rows_y.append(
                    [sampled.get(f"{s}(0)", np.full(n_draws, y0[s]))[i] for s in self.states]
                )
        grid = np.union1d([self.t0], times)
        params, starts = np.array(rows_p, dtype=float), np.array(rows_y, dtype=float)
        inputs_ = np.tile([u[k] for k in self.spec.inputs], (len(params), 1)).astype(float)
        sim = Simulator(self.spec, _solver(self.solver))
        states, dead = sim.run(grid, starts, inputs_, params, [schedule] * len(params), frozen=True)
        if dead[0]:  # the point prediction: nothing where it blew up
            states[0] = np.nan
        obs = sim.observe(states, inputs_, params)
        keep = np.isin(grid, times)
        series = np.concatenate([states, obs], axis=-1)[:, keep]
        columns = [*self.states, *sim.observable_names]
        table = pd.DataFrame({"time": times})
        for j, name in enumerate(columns):
            table[name] = series[0, :, j]
        failed = int(dead[1:].sum()) if draws else 0
        unbounded = None
        if draws:
            # a draw that blew up counts as outside the band from where it escaped (dropping
            # it would narrow the band exactly where the values are least certain): past
            # 1 - level escaped the band is unbounded (:mod:`ude.uq.escape`)
            from ude.uq.escape import escape_index, escaped_quantiles, unbounded_from

            kept = series[1:, None]  # (draw, condition: this one, time, column)
            escaped = escape_index(kept[..., : len(self.states)], dead[1:])  # (draw, 1)
            alive = np.arange(len(times))[None, None, :] < escaped[..., None]
            lo, _, hi = (q[0] for q in escaped_quantiles(kept, alive, level))
            for j, name in enumerate(columns):
                table[f"{name}_lower"] = lo[:, j]
                table[f"{name}_upper"] = hi[:, j]
            finite = np.isfinite(lo).all(-1) & np.isfinite(hi).all(-1)
            unbounded = unbounded_from(finite[None], times)[0]
        table.attrs.update(
            condition=None if c is None else self.conditions[c].name,
            band=kind,
            level=level if draws else None,
            n_draws=draws,
            n_failed=failed,
            unbounded_from=unbounded,
            doses=[d.to_row() for d in schedule],
        )
        return table

    def personalise(
        self,
        data: str | Path | Measurements,
        conditions: str | Path | None = None,
        doses: str | Path | None = None,
        **options: Any,
    ) -> Twin:
        """A personal twin of each new subject (condition) of ``data`` (a CSV table in the
        training data's format, or :class:`ude.data.Measurements`; ``conditions`` and
        ``doses`` tables as in training, the doses possibly planned past the data): see
        :func:`ude.twin.personalise.personalise`."""
        from ude.twin.personalise import personalise

        if not isinstance(data, str | Path):
            return personalise(self, data, **options)
        from ude.data.tables import read_measurements

        measurements = read_measurements(
            data, self.spec, conditions, doses=doses, dose_horizon=np.inf
        )
        return personalise(self, measurements, **options)

    # -- export --------------------------------------------------------------------------------
    def to_sbml(self, path: str | Path | None = None, condition: str | int | None = None) -> str:
        """The twin as SBML: with ``condition``, its own parameter values, initial states,
        inputs and doses (bolus doses as events, infusions as a rate switched by events);
        without, the typical values (a population's median) with the first condition's initial
        states, inputs and doses. Written to ``path`` when given."""
        from ude.spec.sbml import sbml_string

        c = self._index(condition) if condition is not None else (0 if self.conditions else None)
        values = self.values(condition)
        spec = self._plain_spec()
        entry = self.conditions[c] if c is not None else None
        text = sbml_string(
            spec,
            initial=entry.initial if entry else None,
            inputs=entry.inputs if entry else None,
            parameters={k: values[k] for k in spec.parameters},
            doses=entry.doses if entry else (),
        )
        if path is not None:
            Path(path).write_text(text)
        return text

    def write_sbml(self, folder: str | Path) -> list[Path]:
        """``twin.sbml`` (see :meth:`to_sbml`) and, when the twin has individual parameters,
        ``sbml/<condition>.xml`` for each condition, with its own values: one file per
        patient, each a complete model a simulator opens alone."""
        folder = Path(folder)
        written = [folder / "twin.sbml"]
        self.to_sbml(written[0])
        if self.individual and len(self.conditions) > 0:
            (folder / "sbml").mkdir(parents=True, exist_ok=True)
            for c in self.conditions:
                written.append(folder / "sbml" / f"{_file_name(c.name)}.xml")
                self.to_sbml(written[-1], condition=c.name)
        return written

    # -- helpers -------------------------------------------------------------------------------
    def _plain_spec(self) -> ModelSpec:
        """The spec with every parameter a plain number (SBML holds one value each)."""
        params = {k: Parameter(p.value) for k, p in self.spec.parameters.items()}
        return replace(self.spec, parameters=params)

    def _index(self, condition: str | int) -> int:
        names = self.condition_names
        if isinstance(condition, int | np.integer) and not isinstance(condition, bool):
            if 0 <= condition < len(names):
                return int(condition)
        elif condition in names:
            return names.index(condition)
        raise UdeError(
            f"'{condition}' is not a condition of the twin",
            source="condition",
            fix="conditions: " + (", ".join(names) or "none (give initial values)"),
        )

    def _pick(self, condition: str | int | None) -> int | None:
        if condition is not None:
            return self._index(condition)
        return 0 if len(self.conditions) == 1 else None

    def _initial(self, c: int | None, given: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(given) - set(self.states))
        if unknown:
            raise UdeError(
                f"'{unknown[0]}' is not a state",
                source=f"initial.{unknown[0]}",
                fix="states: " + ", ".join(self.states),
            )
        if c is not None:
            base = dict(self.conditions[c].initial)
        else:
            base = _median([x.initial for x in self.conditions])
        out = {**self.spec.initial, **base, **{k: float(v) for k, v in given.items()}}
        missing = [s for s in self.states if s not in out]
        if missing:
            raise UdeError(
                f"no initial value for '{missing[0]}'",
                source=f"initial.{missing[0]}",
                fix=f"give initial.{missing[0]}=<value>",
            )
        return out

    def _inputs(self, c: int | None, given: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(given) - set(self.spec.inputs))
        if unknown:
            raise UdeError(
                f"'{unknown[0]}' is not an input of the twin",
                source=f"inputs.{unknown[0]}",
                fix="inputs: " + (", ".join(self.spec.inputs) or "none"),
            )
        base = (
            dict(self.conditions[c].inputs)
            if c is not None
            else _median([x.inputs for x in self.conditions])
        )
        out = {**base, **{k: float(v) for k, v in given.items()}}
        missing = [u for u in self.spec.inputs if u not in out]
        if missing:
            raise UdeError(
                f"no value for the input '{missing[0]}'",
                source=f"inputs.{missing[0]}",
                fix=f"give inputs.{missing[0]}=<value>",
            )
        return out

    def _doses(
        self, c: int | None, doses: Sequence[Dose] | str | Path | None, t_end: float
    ) -> Schedule:
        if doses is None:
            return self.conditions[c].doses if c is not None else ()
        if isinstance(doses, str | Path):
            name = self.conditions[c].name if c is not None else "typical"
            return read_doses(doses, self.states, {name: t_end}, default_condition=name).get(
                name, ()
            )
        for d in doses:
            if d.state not in self.states:
                raise UdeError(
                    f"'{d.state}' is not a state",
                    source="doses",
                    fix="states: " + ", ".join(self.states),
                )
        return tuple(sorted(doses, key=lambda d: d.time))

    def _draws(
        self, c: int | None, held: set[str], n: int, seed: int
    ) -> tuple[str, dict[str, np.ndarray] | None]:
        """The band's kind and its draws ``{entry: (n,)}`` (None: no band to draw)."""
        rng = np.random.default_rng(seed)
        if c is not None:
            band = self.conditions[c].band
            if band is None or not band.entries:
                return "none (no uncertainty recorded for this condition)", None
            bounds = {k: (p.min, p.max) for k, p in self.spec.parameters.items()}
            held_states = {f"{s}(0)" for s in held}
            return "parameter uncertainty", band.sample(n, rng, held_states, bounds)
        population = {k: p for k, p in self.spec.parameters.items() if p.population is not None}
        if not population:
            return "none (no population parameters)", None
        out = {}
        for k, p in population.items():
            z = rng.standard_normal(n) * p.spread
            out[k] = p.value * np.exp(z) if p.population == "lognormal" else p.value + z
        return "between-subject variability (population)", out


def _median(entries: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for e in entries for k in e}
    return {k: float(np.nanmedian([e.get(k, np.nan) for e in entries])) for k in keys}


def _solver(method: str):
    from ude.model.solver import Solver

    return Solver(method, rtol=1e-6, atol=1e-8, max_steps=20_000)


def _file_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "condition"
