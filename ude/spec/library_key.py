"""The spec's ``library:`` key (and ``distill.library``): which rate-law families and custom
terms the distillation searches for each neural slot.

Three forms::

    library: [mass_action, michaelis_menten, hill]      # exactly these families
    library: [mass_action, "x*y/(1 + z)"]              # families and custom terms
    library: {add: ["x*y/(1 + z)"], remove: [hill]}     # the default, changed

Without the key a slot gets :data:`DEFAULT_FAMILIES`, what a biologist would search. A custom
term is an expression in the spec grammar over states and inputs (numbers, no parameters); it
goes to every slot whose network sees all its names. The families themselves (the terms each
one builds over a slot's inputs) live in :mod:`ude.distill.library`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sympy as sp

from ude.errors import UdeError
from ude.spec.expressions import parse_expression

FAMILIES = ("constant", "mass_action", "michaelis_menten", "hill", "polynomial")
"""Family names: a zero-order rate; products of up to two inputs; Michaelis-Menten saturation
``x/(K + x)`` (also times another input); Hill activation and repression with free ``K`` and
``n``; all monomials up to degree 3."""

DEFAULT_FAMILIES = ("constant", "mass_action", "michaelis_menten", "hill")
"""What a slot searches when neither the spec nor the config says otherwise."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LibraryChoice:
    """A validated ``library:`` value: ``items`` replaces the list (None: keep it), then
    ``add`` appends and ``remove`` drops items. Items are family names or custom terms."""

    items: tuple[str, ...] | None = None
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()

    def apply(self, items: Sequence[str]) -> list[str]:
        """The list after this choice, from ``items`` (e.g. :data:`DEFAULT_FAMILIES`)."""
        out = list(self.items) if self.items is not None else list(items)
        out += [a for a in self.add if a not in out]
        return [i for i in out if i not in self.remove]

    def to_yaml(self) -> list[str] | dict[str, list[str]]:
        if self.items is not None and not self.add and not self.remove:
            return list(self.items)
        out: dict[str, list[str]] = {}
        if self.items is not None:
            out["items"] = list(self.items)
        if self.add:
            out["add"] = list(self.add)
        if self.remove:
            out["remove"] = list(self.remove)
        return out


def custom_term(
    item: str, names: Sequence[str], source: str | None = None, where: str | None = None
) -> sp.Expr | None:
    """The custom term ``item`` as sympy over ``names``; None for a family name. An unknown
    family or an undeclared name is a :class:`UdeError`."""
    if item in FAMILIES:
        return None
    if _NAME.match(item) and item not in names:
        raise UdeError(
            f"unknown family '{item}'",
            source=source,
            where=where,
            fix="families: " + ", ".join(FAMILIES) + "; or a custom term over " + ", ".join(names),
        )
    return parse_expression(item, names, source=source, where=where)


def parse_library(
    raw: Any, names: Sequence[str], source: str | None = None, where: str = "library"
) -> LibraryChoice | None:
    """Validate a ``library:`` value (list or ``{add, remove, items}`` mapping) against the
    declared state and input ``names``; None when ``raw`` is None."""
    if raw is None:
        return None

    def items(value: Any, at: str) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise UdeError(
                f"expected a list of families or terms, got {type(value).__name__}",
                source=source,
                where=at,
                fix="e.g. [mass_action, hill] or {add: ['x/(1 + y)'], remove: [hill]}",
            )
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise UdeError(
                    f"expected a family name or a term, got {item!r}",
                    source=source,
                    where=f"{at}[{i}]",
                    fix="families: " + ", ".join(FAMILIES),
                )
            custom_term(item.strip(), names, source, f"{at}[{i}]")
            out.append(item.strip())
        return tuple(out)

    if isinstance(raw, dict):
        extra = set(raw) - {"items", "add", "remove"}
        if extra:
            raise UdeError(
                f"unknown key '{sorted(extra)[0]}'",
                source=source,
                where=where,
                fix="a list of families and terms, or a mapping with add, remove (and items)",
            )
        choice = LibraryChoice(
            items=items(raw["items"], f"{where}.items") if "items" in raw else None,
            add=items(raw.get("add") or [], f"{where}.add"),
            remove=items(raw.get("remove") or [], f"{where}.remove"),
        )
    else:
        choice = LibraryChoice(items=items(raw, where))
    if not choice.apply(DEFAULT_FAMILIES):
        raise UdeError(
            "the library is empty", source=source, where=where, fix="keep at least one family"
        )
    return choice


def check_terms_reach_a_slot(
    choice: LibraryChoice | None,
    slots: Sequence[tuple[str, Sequence[str]]],
    names: Sequence[str],
    source: str | None = None,
    where: str = "library",
) -> None:
    """Each custom term must be usable by some slot ``(name, inputs)``: a term over names no
    network sees could never be part of a learned term."""
    if choice is None or not slots:
        return
    for item in (*(choice.items or ()), *choice.add):
        expr = custom_term(item, names, source, where)
        if expr is None:
            continue
        used = {str(s) for s in expr.free_symbols}
        if not any(used <= set(inputs) for _, inputs in slots):
            seen = "; ".join(f"{name}: {', '.join(inputs)}" for name, inputs in slots)
            raise UdeError(
                f"custom term '{item}' uses {', '.join(sorted(used))}, which no network sees",
                source=source,
                where=where,
                fix=f"network inputs: {seen}",
            )
