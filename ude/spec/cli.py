"""Command line for specs: ``ude-spec`` / ``python -m ude.spec``.

    ude-spec export model.yaml -o model.xml    # a spec (YAML, SBML or zoo name) as SBML
    ude-spec check model.yaml                  # parse, list terms, conservation laws, ranges

Errors a user can cause print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ude.errors import UdeError
from ude.spec.expressions import format_expression
from ude.spec.model_spec import load_spec
from ude.spec.reactions import format_law


def _check(path: str) -> str:
    spec = load_spec(path)
    lines = [
        f"{spec.name}: {len(spec.states)} states, {len(spec.reactions)} reactions, "
        f"{len(spec.parameters)} parameters"
    ]
    for state, rhs in zip(spec.states, spec.known_rhs(), strict=True):
        terms = [format_expression(rhs)] if rhs != 0 else []
        for slot in spec.neural:
            if state not in slot.targets:
                continue
            if slot.stoichiometry is None:
                terms.append(f"{slot.name}({', '.join(slot.inputs)})")
                continue
            row = slot.stoichiometry[slot.targets.index(state)]
            for reaction, c in zip(slot.reactions, row, strict=True):
                if c:
                    coef = "" if abs(c) == 1 else f"{abs(c):g}*"
                    terms.append(f"{'-' if c < 0 else ''}{coef}v_{reaction}")
        text = " + ".join(terms).replace("+ -", "- ") or "0"
        lines.append(f"  d{state}/dt = {text}")
    if any(s.stoichiometry is not None for s in spec.neural):
        lines.append("  (v_<reaction>: a flux learned by a network)")
    laws = spec.conservation_laws()
    if laws:
        lines.append("conservation laws (constant along every solution):")
        lines += [f"  {format_law(law)}" for law in laws]
    else:
        lines.append("conservation laws: none")
    if spec.nonnegative:
        lines.append(f"amounts (never below zero): {', '.join(spec.nonnegative)}")
    if spec.bounds:
        ranges = ", ".join(f"{s} in [{lo:g}, {hi:g}]" for s, (lo, hi) in spec.bounds.items())
        lines.append(f"ranges: {ranges}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str = "ude-spec") -> int:
    about = __doc__.split("\n")[0].replace("``", "")
    parser = argparse.ArgumentParser(prog=prog, description=about)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write a spec as SBML")
    export.add_argument("spec", help="a spec .yaml, an SBML file or a zoo system name")
    export.add_argument("-o", "--output", required=True, help="the SBML file to write")
    check = sub.add_parser(
        "check", help="parse a spec; print its terms, conservation laws, amounts and ranges"
    )
    check.add_argument("spec")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            from ude.spec.sbml import write_sbml

            spec = load_spec(args.spec)
            try:
                write_sbml(spec, args.output)
            except OSError as err:
                raise UdeError(f"cannot write: {err.strerror}", source=args.output) from None
            print(f"wrote {args.output}")
        else:
            print(_check(args.spec))
    except UdeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def cli() -> None:
    """The console script: exit with :func:`main`'s status."""
    sys.exit(main())
