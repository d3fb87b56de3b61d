"""The inputs a run config names (its checkpoint, its spec and its library choice), read and
checked without torch: ``python train.py`` checks them before Lightning loads, so a bad one
answers in a second or two rather than after the several seconds of that import."""

from __future__ import annotations

from pathlib import Path

from omegaconf import Container, DictConfig, OmegaConf

from ude.errors import UdeError
from ude.spec.library_key import check_terms_reach_a_slot, parse_library
from ude.spec.model_spec import ModelSpec, load_spec

_SLOW_TO_READ = (".xml", ".sbml")
"""Spec sources read in build_run only (SBML through libsbml, PEtab problems: seconds each)."""


def petab_spec_source(cfg: DictConfig) -> str:
    """The spec of a run: ``model.spec``, except that with ``data=petab`` a zoo system name
    (the default) gives way to the PEtab problem itself."""
    source = str(cfg.model.spec)
    problem = cfg.data.get("problem") if "problem" in cfg.data else None
    if problem and not source.lower().endswith((".yaml", ".yml", ".xml", ".sbml")):
        return str(problem)
    return source


def check_library_choice(cfg: DictConfig, spec: ModelSpec) -> None:
    """A bad ``distill.library`` (unknown family, undeclared name in a custom term) is an
    error before training, not after."""
    from ude.distill.cli import distill_enabled

    choice = cfg.distill.get("library") if distill_enabled(cfg) else None
    if choice is None:
        return
    raw = OmegaConf.to_container(choice, resolve=True) if isinstance(choice, Container) else choice
    names = [*spec.states, *spec.inputs]
    parsed = parse_library(raw, names, source="config", where="distill.library")
    slots = [(s.name, s.inputs) for s in spec.neural]
    check_terms_reach_a_slot(parsed, slots, names, source="config", where="distill.library")


def missing_checkpoint(path: str) -> UdeError:
    """The error for a ``ckpt_path`` that is no file."""
    return UdeError(
        "checkpoint not found",
        source=str(path),
        fix="give the last.ckpt of an earlier run: <run>/checkpoints/last.ckpt",
    )


def check_run_inputs(cfg: DictConfig) -> None:
    """Check that ``ckpt_path`` (where given) is a file, read the run's spec (a YAML file or a
    zoo system; an SBML file or a PEtab problem is left to the run, whose reading it is) and
    check its library choice: raises :class:`~ude.errors.UdeError`, as the run would later."""
    ckpt = cfg.get("ckpt_path")
    if ckpt and not Path(str(ckpt)).is_file():
        raise missing_checkpoint(ckpt)
    problem = cfg.data.get("problem") if "problem" in cfg.data else None
    source = petab_spec_source(cfg)
    if problem or source.lower().endswith(_SLOW_TO_READ):
        return
    check_library_choice(cfg, load_spec(source))
