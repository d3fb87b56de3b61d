"""SBML in and out: a ModelSpec from an SBML model, and a (twin) ModelSpec as SBML.

Reading walks libsbml's math trees node by node into sympy (no formula text is evaluated).
What the reader cannot turn into an ODE right-hand side (events, algebraic rules, delays,
piecewise, non-constant compartments, ...) is refused with a message naming the element.
The file is read as text and refused if it declares a DTD or entities, so no external entity
is ever resolved.
"""

from __future__ import annotations

import keyword
from collections.abc import Iterable
from pathlib import Path
from xml.sax.saxutils import escape

import libsbml
import sympy as sp

from ude.errors import UdeError
from ude.spec.expressions import FUNCTIONS, MAX_TERMS, format_expression, symbol, tree_size
from ude.spec.model_spec import ModelSpec, NeuralSlot, Parameter, reaction_slot
from ude.spec.reactions import Reaction, format_law

_MAX_BYTES = 50_000_000
_MAX_CALLS = 10_000

# -- reading -----------------------------------------------------------------------------------

_UNSUPPORTED_MATH = {
    libsbml.AST_FUNCTION_DELAY: "delay",
    libsbml.AST_FUNCTION_PIECEWISE: "piecewise",
    libsbml.AST_NAME_TIME: "time (the spec is autonomous; give time courses as inputs)",
    libsbml.AST_NAME_AVOGADRO: "avogadro",
    libsbml.AST_FUNCTION_RATE_OF: "rateOf",
}


class _MathReader:
    """Turns libsbml ASTNodes into sympy over renamed ids, inlining function definitions."""

    def __init__(
        self,
        source: str,
        rename: dict[str, str],
        functions: dict[str, libsbml.ASTNode],
        time: str | None = None,
    ):
        self.source = source
        self.rename = rename
        self.functions = functions
        self.time = time  # the symbol SBML's csymbol time becomes (None: refused)
        self.calls = 0  # function calls inlined in this document (nested calls multiply)

    def fail(self, where: str, message: str, hint: bool = True) -> UdeError:
        return UdeError(
            message,
            source=self.source,
            where=where,
            fix="the SBML reader supports + - * / power, exp, ln, log, root, tanh, "
            "numbers, ids and function definitions over these"
            if hint
            else None,
        )

    def read(self, node: libsbml.ASTNode | None, where: str, local: dict | None = None):
        if node is None:
            raise self.fail(where, "has no math")
        return self.bounded(self._walk(node, where, local or {}, 0), where)

    def bounded(self, expr: sp.Expr, where: str) -> sp.Expr:
        """``expr``, refused when written out it would have more than MAX_TERMS nodes
        (inlined functions and rules share subtrees; everything downstream copies them)."""
        if tree_size(expr) > MAX_TERMS:
            raise self.fail(
                where, f"expands to more than {MAX_TERMS} terms when inlined", hint=False
            )
        return expr

    def _walk(self, node: libsbml.ASTNode, where: str, local: dict, depth: int) -> sp.Expr:
        if depth > 200:
            raise self.fail(where, "math is nested more than 200 levels deep", hint=False)
        t = node.getType()
        kids = [node.getChild(i) for i in range(node.getNumChildren())]

        def sub(i: int) -> sp.Expr:
            return self._walk(kids[i], where, local, depth + 1)

        if t == libsbml.AST_NAME_TIME and self.time is not None:
            return symbol(self.time)
        if t in _UNSUPPORTED_MATH:
            raise self.fail(where, f"uses {_UNSUPPORTED_MATH[t]}, which is not supported")
        if t == libsbml.AST_INTEGER:
            return sp.Integer(node.getInteger())
        if t == libsbml.AST_RATIONAL:
            return sp.Rational(node.getNumerator(), node.getDenominator())
        if t in (libsbml.AST_REAL, libsbml.AST_REAL_E):
            value = node.getReal()
            if value != value or value in (float("inf"), float("-inf")):
                raise self.fail(where, "uses a number that is not finite")
            return sp.Float(value)
        if t == libsbml.AST_NAME:
            name = node.getName()
            if name in local:
                return local[name]
            if name not in self.rename:
                raise self.fail(
                    where,
                    f"uses '{name}', which is not a species, parameter or compartment of the model",
                )
            return (
                self.rename[name]
                if isinstance(self.rename[name], sp.Expr)
                else symbol(self.rename[name])
            )
        if t == libsbml.AST_CONSTANT_E:
            return sp.E
        if t == libsbml.AST_CONSTANT_PI:
            return sp.pi
        if t == libsbml.AST_PLUS:
            return sp.Add(*(sub(i) for i in range(len(kids))))
        if t == libsbml.AST_MINUS:
            if len(kids) == 1:
                return -sub(0)
            if len(kids) == 2:
                return sub(0) - sub(1)
        if t == libsbml.AST_TIMES:
            return sp.Mul(*(sub(i) for i in range(len(kids))))
        if t == libsbml.AST_DIVIDE and len(kids) == 2:
            return sub(0) / sub(1)
        if t in (libsbml.AST_POWER, libsbml.AST_FUNCTION_POWER) and len(kids) == 2:
            return sub(0) ** sub(1)
        if t == libsbml.AST_FUNCTION_EXP and len(kids) == 1:
            return _fold(sp.exp(sub(0)))
        if t == libsbml.AST_FUNCTION_LN and len(kids) == 1:
            return _fold(sp.log(sub(0)))
        if t == libsbml.AST_FUNCTION_LOG:
            if len(kids) == 1:
                return _fold(sp.log(sub(0), 10))
            if len(kids) == 2:  # (logbase, argument)
                return _fold(sp.log(sub(1), sub(0)))
        if t == libsbml.AST_FUNCTION_ROOT:
            if len(kids) == 1:
                return sp.sqrt(sub(0))
            if len(kids) == 2:  # (degree, argument)
                return sub(1) ** (1 / sub(0))
        if t == libsbml.AST_FUNCTION_TANH and len(kids) == 1:
            return _fold(sp.tanh(sub(0)))
        if t == libsbml.AST_FUNCTION:
            return self._call(node.getName(), [sub(i) for i in range(len(kids))], where, depth)
        label = node.getName() or _type_name(t)
        raise self.fail(where, f"uses MathML '{label}', which is not supported")

    def _call(self, name: str, args: list[sp.Expr], where: str, depth: int) -> sp.Expr:
        lam = self.functions.get(name)
        if lam is None:
            raise self.fail(where, f"calls '{name}', which is not a function definition")
        n_args = lam.getNumBvars()
        if n_args != len(args):
            raise self.fail(where, f"calls '{name}' with {len(args)} arguments, not {n_args}")
        bound = {lam.getChild(i).getName(): a for i, a in enumerate(args)}
        body = lam.getChild(lam.getNumChildren() - 1)
        # A function body sees only its arguments (SBML), plus other functions.
        self.calls += 1
        if self.calls > _MAX_CALLS:
            raise self.fail(where, f"inlines more than {_MAX_CALLS} function calls", hint=False)
        # The body sees its arguments (they shadow the model's ids) and other functions.
        return self._walk(body, f"{where} (in functionDefinition '{name}')", bound, depth + 1)


def _fold(expr: sp.Expr) -> sp.Expr:
    """A function of numbers (ln(2) in a rate law) as one float, so it compiles as a constant."""
    return sp.Float(float(expr)) if expr.is_number and not expr.is_Number else expr


def _replace(expr: sp.Basic, mapping: dict, memo: dict) -> sp.Basic:
    """``expr.xreplace(mapping)``, visiting each distinct subexpression once."""
    if expr in mapping:
        return mapping[expr]
    if not expr.args:
        return expr
    if expr not in memo:
        args = [_replace(a, mapping, memo) for a in expr.args]
        memo[expr] = expr.func(*args) if args != list(expr.args) else expr
    return memo[expr]


def _type_name(t: int) -> str:
    for key in dir(libsbml):
        if key.startswith("AST_") and getattr(libsbml, key) == t:
            return key[4:].lower()
    return str(t)


def _spec_name(sid: str, taken: set[str]) -> str:
    """An SBML id as a spec name: reserved words get a trailing underscore."""
    name = sid
    while keyword.iskeyword(name) or name in FUNCTIONS or name in taken:
        name += "_"
    return name


def read_sbml(
    path: str | Path,
    neural: Iterable[str] = (),
    *,
    text: str | None = None,
    time: str | None = None,
) -> ModelSpec:
    """A ModelSpec from the SBML file ``path`` (or its ``text``).

    Species become states (amounts, or concentrations when not ``hasOnlySubstanceUnits``);
    reactions keep their kinetic laws; rate rules become equations; assignment rules and
    function definitions are inlined (assignment-rule targets also become observables);
    constant compartment sizes are substituted. Boundary or constant species become fixed
    parameters. A reaction without a kinetic law, or named in ``neural``, gets a learned flux;
    a species named in ``neural`` gets a per-state network.
    """
    source = str(path)
    if text is None:
        p = Path(path)
        if not p.is_file():
            raise UdeError("SBML file not found", source=source)
        if p.stat().st_size > _MAX_BYTES:
            raise UdeError("SBML file is larger than 50 MB", source=source)
        text = p.read_bytes().decode("utf-8", errors="replace")
    head = text[:100_000].upper()
    if "<!DOCTYPE" in head or "<!ENTITY" in head:
        raise UdeError(
            "the file declares a DOCTYPE or entities, which SBML does not use",
            source=source,
            where="<!DOCTYPE>",
            fix="remove the DOCTYPE/ENTITY declarations; external entities are never resolved",
        )
    doc = libsbml.readSBMLFromString(text)
    for i in range(doc.getNumErrors()):
        err = doc.getError(i)
        if err.getSeverity() >= libsbml.LIBSBML_SEV_ERROR:
            raise UdeError(
                f"not valid SBML: {err.getMessage().strip().splitlines()[0]}",
                source=source,
                where=f"line {err.getLine()}",
            )
    model = doc.getModel()
    if model is None:
        raise UdeError("the SBML document has no model", source=source)
    try:
        return _ModelReader(model, doc, source, set(neural), time).read()
    except RecursionError:
        raise UdeError("the model's math is nested too deeply", source=source) from None


class _ModelReader:
    def __init__(self, model, doc, source: str, neural: set[str], time: str | None = None):
        self.model = model
        self.time = time
        self.doc = doc
        self.source = source
        self.neural = neural
        self.boundary: set[str] = set()
        self.local_parameters: dict[str, Parameter] = {}

    def fail(self, where: str, message: str, fix: str | None = None) -> UdeError:
        return UdeError(message, source=self.source, where=where, fix=fix)

    def refuse_unsupported(self) -> None:
        m = self.model
        # Packages are declared as namespaces of the document (Level 3 only); a package the
        # file marks required changes the math, one marked optional (layout, ...) does not.
        namespaces = self.doc.getNamespaces()
        for i in range(namespaces.getLength() if namespaces is not None else 0):
            uri, prefix = namespaces.getURI(i), namespaces.getPrefix(i)
            if "/sbml/level3/" not in uri or uri.endswith("/core") or not prefix:
                continue
            if self.doc.getPackageRequired(prefix):
                raise self.fail(
                    f"package '{prefix}'",
                    "SBML packages that change the math are not supported",
                )
        if m.getNumEvents():
            raise self.fail(
                f"event '{m.getEvent(0).getId() or 0}'",
                "events are not supported",
                "remove the events; give interventions as conditions with inputs",
            )
        if m.getNumConstraints():
            raise self.fail("constraint", "constraints are not supported", "remove them")
        for i in range(m.getNumRules()):
            rule = m.getRule(i)
            if rule.isAlgebraic():
                raise self.fail(
                    f"algebraicRule {i}",
                    "algebraic rules are not supported",
                    "write the model as ODEs (rate rules or reactions)",
                )
        if m.isSetConversionFactor():
            raise self.fail("model conversionFactor", "conversion factors are not supported")
        for i in range(m.getNumCompartments()):
            c = m.getCompartment(i)
            if not c.getConstant():
                raise self.fail(
                    f"compartment '{c.getId()}'", "compartments of changing size are not supported"
                )

    def read(self) -> ModelSpec:
        m = self.model
        self.refuse_unsupported()
        taken: set[str] = set()
        rename: dict[str, sp.Expr | str] = {}
        rules = {m.getRule(i).getVariable(): m.getRule(i) for i in range(m.getNumRules())}
        # Compartments: constant sizes, substituted as numbers.
        sizes: dict[str, float] = {}
        for i in range(m.getNumCompartments()):
            c = m.getCompartment(i)
            size = c.getSize() if c.isSetSize() else 1.0
            if c.getId() in rules or m.getInitialAssignment(c.getId()) is not None:
                raise self.fail(
                    f"compartment '{c.getId()}'",
                    "compartment sizes set by rules or initial assignments are not supported",
                )
            if not size > 0:
                raise self.fail(f"compartment '{c.getId()}'", f"size {size} is not positive")
            sizes[c.getId()] = size
            rename[c.getId()] = sp.Float(size) if size != 1 else sp.Integer(1)
        states: list[str] = []
        parameters: dict[str, Parameter] = {}
        initial: dict[str, float] = {}
        divisor: dict[str, float] = {}  # species -> compartment size when a concentration
        sid_of: dict[str, str] = {}
        for i in range(m.getNumSpecies()):
            s = m.getSpecies(i)
            sid = s.getId()
            where = f"species '{sid}'"
            if s.isSetConversionFactor():
                raise self.fail(where, "conversion factors are not supported")
            name = _spec_name(sid, taken)
            taken.add(name)
            rename[sid] = name
            sid_of[name] = sid
            size = sizes.get(s.getCompartment(), 1.0)
            amount_units = s.getHasOnlySubstanceUnits()
            if s.isSetInitialAmount():
                value = s.getInitialAmount() / (1.0 if amount_units else size)
            elif s.isSetInitialConcentration():
                value = s.getInitialConcentration() * (size if amount_units else 1.0)
            elif m.getInitialAssignment(sid) is not None:
                value = float("nan")  # resolved below
            else:
                raise self.fail(where, "has no initial amount or concentration")
            rule = rules.get(sid)
            if s.getBoundaryCondition() or s.getConstant():
                self.boundary.add(name)  # reactions do not change it
            if rule is not None and rule.isAssignment():
                continue  # inlined below
            if name in self.boundary and rule is None:
                parameters[name] = Parameter(value=value)
            else:
                states.append(name)
                initial[name] = value
                divisor[name] = 1.0 if amount_units else size
        for i in range(m.getNumParameters()):
            p = m.getParameter(i)
            name = _spec_name(p.getId(), taken)
            taken.add(name)
            rename[p.getId()] = name
            sid_of[name] = p.getId()
            value = p.getValue() if p.isSetValue() else float("nan")
            rule = rules.get(p.getId())
            if rule is not None and rule.isRate():
                states.append(name)
                initial[name] = value
                divisor[name] = 1.0
            elif rule is None:
                parameters[name] = Parameter(value=value)
        functions = {}
        for i in range(m.getNumFunctionDefinitions()):
            fd = m.getFunctionDefinition(i)
            if fd.getMath() is None or not fd.getMath().isLambda():
                raise self.fail(f"functionDefinition '{fd.getId()}'", "has no lambda to inline")
            functions[fd.getId()] = fd.getMath()
        if self.time is not None and self.time in rename.values():
            raise self.fail(
                f"'{self.time}'", "an id of the model is the name reserved for time", "rename it"
            )
        math = _MathReader(self.source, rename, functions, self.time)

        # Assignment rules: inlined in order of dependence; their targets are also observables.
        assigned: dict[str, sp.Expr] = {}
        for var, rule in rules.items():
            if rule.isAssignment():
                if var in sizes:
                    raise self.fail(
                        f"assignmentRule '{var}'", "rules on compartments are not supported"
                    )
                assigned[var] = math.read(rule.getMath(), f"assignmentRule '{var}'")
        # Resolved in order of dependence with a memoised substitution: rules that use each
        # other many times share subtrees, which a plain tree walk would copy exponentially.
        by_symbol = {symbol(rename[v]): e for v, e in assigned.items()}
        subs: dict[sp.Symbol, sp.Expr] = {}

        def resolve(sym: sp.Symbol, stack: tuple[sp.Symbol, ...]) -> sp.Expr:
            if sym in subs:
                return subs[sym]
            if sym in stack:
                raise self.fail(
                    f"assignmentRule '{sym}'", "assignment rules depend on each other in a cycle"
                )
            expr = by_symbol[sym]
            deps = {d: resolve(d, (*stack, sym)) for d in expr.free_symbols if d in by_symbol}
            subs[sym] = math.bounded(_replace(expr, deps, {}), f"assignmentRule '{sym}'")
            return subs[sym]

        for sym in by_symbol:
            resolve(sym, ())
        for k in list(subs):
            parameters.pop(str(k), None)
        observables = {str(k): e for k, e in subs.items()}
        inline_memo: dict[sp.Basic, sp.Basic] = {}

        def inline(expr: sp.Expr) -> sp.Expr:
            return math.bounded(_replace(expr, subs, inline_memo), "rule or kinetic law")

        # Initial assignments: evaluated with the parameters' and species' values.
        values = {symbol(n): p.value for n, p in parameters.items()}
        values.update({symbol(n): v for n, v in initial.items() if v == v})
        if self.time is not None:
            values[symbol(self.time)] = 0.0
        initial_assignments: dict[str, sp.Expr] = {}
        for i in range(m.getNumInitialAssignments()):
            ia = m.getInitialAssignment(i)
            where = f"initialAssignment '{ia.getSymbol()}'"
            name = rename.get(ia.getSymbol())
            if not isinstance(name, str):
                raise self.fail(where, "initial assignments to this element are not supported")
            formula = inline(math.read(ia.getMath(), where))
            if name in initial and not formula.is_number:
                initial_assignments[name] = formula
            expr = sp.sympify(formula.xreplace(values))
            if not expr.is_number:
                raise self.fail(where, "does not evaluate to a number from the parameter values")
            value = float(expr)
            if name in initial:  # a species' value in the units its symbol has in the math
                initial[name] = value
            elif name in parameters:
                parameters[name] = Parameter(value=value)
        for name, v in [*initial.items(), *((n, p.value) for n, p in parameters.items())]:
            if v != v:
                raise self.fail(f"'{sid_of.get(name, name)}'", "has no value")

        # Rate rules: equations.
        equations: dict[str, sp.Expr] = {}
        for var, rule in rules.items():
            if rule.isRate():
                name = rename.get(var)
                if not isinstance(name, str) or name not in states:
                    raise self.fail(
                        f"rateRule '{var}'", "rate rules on compartments are not supported"
                    )
                equations[name] = inline(math.read(rule.getMath(), f"rateRule '{var}'"))

        reactions = [
            self.reaction(i, math, rename, states, divisor, inline, taken)
            for i in range(m.getNumReactions())
        ]
        parameters.update(self.local_parameters)
        for name in self.neural:
            if name not in {r.name for r in reactions} and name not in rename:
                raise self.fail(f"neural '{name}'", "is not a reaction or species of the model")
        neural_species = [rename[n] for n in self.neural if n in rename]
        for n in neural_species:
            if not isinstance(n, str) or n not in states:
                raise self.fail(f"neural '{n}'", "only species that change can get a network")
        inputs: list[str] = []
        neural: list[NeuralSlot] = []
        if neural_species:
            neural.append(NeuralSlot("net", tuple(neural_species), tuple(states)))
        slot = reaction_slot(reactions, states, inputs, {s.name for s in neural})
        if slot is not None:
            neural.append(slot)
        for s in states:
            if s not in initial:
                initial[s] = 0.0
        return ModelSpec(
            states=states,
            parameters=parameters,
            inputs=inputs,
            equations=equations,
            neural=neural,
            observables=observables,
            name=self.model.getId() or self.model.getName() or Path(self.source).stem,
            source=self.source,
            reactions=reactions,
            initial=initial,
            initial_assignments=initial_assignments,
            time=self.time
            if self.time is not None and self.uses_time(equations, reactions)
            else None,
        )

    def uses_time(self, equations: dict[str, sp.Expr], reactions: list[Reaction]) -> bool:
        t = symbol(self.time)
        exprs = [*equations.values(), *(r.flux for r in reactions if r.rate is not None)]
        return any(t in e.free_symbols for e in exprs)

    def reaction(self, i, math, rename, states, divisor, inline, taken) -> Reaction:
        r = self.model.getReaction(i)
        rid = r.getId()
        where = f"reaction '{rid}'"
        if r.isSetFast() and r.getFast():
            raise self.fail(where, "fast reactions are not supported")
        terms: dict[str, float] = {}
        reactants: dict[str, float] = {}
        products: dict[str, float] = {}
        for side, getn, get in (
            (reactants, r.getNumReactants, r.getReactant),
            (products, r.getNumProducts, r.getProduct),
        ):
            for j in range(getn()):
                ref = get(j)
                if ref.isSetStoichiometryMath():
                    raise self.fail(where, "stoichiometryMath is not supported")
                if self.model.getLevel() >= 3 and not ref.isSetStoichiometry():
                    raise self.fail(where, f"species '{ref.getSpecies()}' has no stoichiometry")
                if self.model.getLevel() >= 3 and not ref.getConstant():
                    raise self.fail(where, "variable stoichiometries are not supported")
                name = rename.get(ref.getSpecies())
                if not isinstance(name, str):
                    raise self.fail(where, f"refers to unknown species '{ref.getSpecies()}'")
                if name not in states or name in self.boundary:
                    continue  # boundary, constant or assigned species: unchanged by reactions
                side[name] = side.get(name, 0.0) + ref.getStoichiometry()
                terms[name] = 0.0
        law = r.getKineticLaw() if r.isSetKineticLaw() else None
        is_neural = rid in self.neural or law is None or law.getMath() is None
        if not terms:
            raise self.fail(where, "changes no species")
        # Divide the flux by a shared compartment size (concentrations) or fold the sizes
        # into the coefficients when species live in compartments of different sizes.
        sizes = {divisor[s] for s in terms}
        common = sizes.pop() if len(sizes) == 1 else None
        if common is None:
            reactants = {s: c / divisor[s] for s, c in reactants.items()}
            products = {s: c / divisor[s] for s, c in products.items()}
        name = _spec_name(rid, set())
        if is_neural:
            return Reaction(name, reactants, products, None, None, r.getReversible())
        local: dict[str, sp.Expr] = {}
        params = [law.getParameter(j) for j in range(law.getNumParameters())]
        if hasattr(law, "getNumLocalParameters"):
            params += [law.getLocalParameter(j) for j in range(law.getNumLocalParameters())]
        for p in params:
            if p.getId() in local:
                continue
            # Local parameters become global ones, prefixed with the reaction's id.
            pname = _spec_name(f"{rid}_{p.getId()}", taken)
            taken.add(pname)
            local[p.getId()] = symbol(pname)
            self.local_parameters[pname] = Parameter(value=p.getValue())
        flux = inline(math.read(law.getMath(), f"{where} kineticLaw", local))
        if common not in (None, 1.0):
            flux = flux / sp.Float(common)
        return Reaction(name, reactants, products, flux, None, r.getReversible())


# -- writing -----------------------------------------------------------------------------------

_SYMPY_FUNCTIONS = {
    sp.exp: libsbml.AST_FUNCTION_EXP,
    sp.log: libsbml.AST_FUNCTION_LN,
    sp.tanh: libsbml.AST_FUNCTION_TANH,
    sp.Abs: libsbml.AST_FUNCTION_ABS,
}


def _ast(expr: sp.Basic, ids: dict[str, str]) -> libsbml.ASTNode:
    """A libsbml math tree for a sympy expression (names mapped by ``ids``)."""

    def node(kind: int, *children: libsbml.ASTNode) -> libsbml.ASTNode:
        out = libsbml.ASTNode(kind)
        for c in children:
            out.addChild(c)
        return out

    def walk(e: sp.Basic) -> libsbml.ASTNode:
        if e.is_Integer:
            out = libsbml.ASTNode(libsbml.AST_INTEGER)
            out.setValue(int(e))
            return out
        if e.is_Rational:
            out = libsbml.ASTNode(libsbml.AST_RATIONAL)
            out.setValue(int(e.p), int(e.q))
            return out
        if e.is_Float:
            out = libsbml.ASTNode(libsbml.AST_REAL)
            out.setValue(float(e))
            return out
        if e is sp.E:
            return libsbml.ASTNode(libsbml.AST_CONSTANT_E)
        if e is sp.pi:
            return libsbml.ASTNode(libsbml.AST_CONSTANT_PI)
        if e.is_Symbol:
            out = libsbml.ASTNode(libsbml.AST_NAME)
            out.setName(ids.get(e.name, e.name))
            return out
        if e.is_Add:
            return node(libsbml.AST_PLUS, *(walk(a) for a in e.args))
        if e.is_Mul:
            num, den = sp.fraction(e, exact=True)
            if den != 1:
                return node(libsbml.AST_DIVIDE, walk(num), walk(den))
            return node(libsbml.AST_TIMES, *(walk(a) for a in e.args))
        if e.is_Pow:
            base, exponent = e.args
            if exponent.is_Number and exponent < 0:
                return node(libsbml.AST_DIVIDE, walk(sp.Integer(1)), walk(base**-exponent))
            return node(libsbml.AST_POWER, walk(base), walk(exponent))
        if type(e) in _SYMPY_FUNCTIONS:
            return node(_SYMPY_FUNCTIONS[type(e)], walk(e.args[0]))
        raise ValueError(f"cannot write {type(e).__name__} to SBML: {e}")

    return walk(sp.sympify(expr))


def _fresh(base: str, taken: set[str]) -> str:
    name = base
    i = 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def sbml_string(
    spec: ModelSpec,
    *,
    initial: dict[str, float] | None = None,
    inputs: dict[str, float] | None = None,
    parameters: dict[str, float] | None = None,
) -> str:
    """``spec`` as an SBML Level 3 Version 2 document (see :func:`write_sbml`)."""
    per_state = [s for s in spec.neural if s.stoichiometry is None]
    if per_state:
        raise UdeError(
            "the spec has neural terms on "
            + ", ".join(t for s in per_state for t in s.targets)
            + ", which SBML cannot hold",
            source=spec.source or spec.name,
            where="neural",
            fix="export the distilled twin, or write the unknown fluxes as reactions with "
            "rate 'neural'",
        )
    doc = libsbml.SBMLDocument(3, 2)
    model = doc.createModel()
    model.setId(_spec_id(spec.name))
    model.setNotes(_notes(spec))
    taken = {*spec.states, *spec.inputs, *spec.parameters}
    comp = model.createCompartment()
    comp_id = _fresh("compartment", taken)
    comp.setId(comp_id)
    comp.setConstant(True)
    comp.setSize(1.0)
    comp.setSpatialDimensions(3)
    start = {**spec.initial, **(initial or {})}
    for s in spec.states:
        sp_ = model.createSpecies()
        sp_.setId(s)
        sp_.setCompartment(comp_id)
        sp_.setInitialAmount(float(start.get(s, 0.0)))
        # Amounts in a unit compartment: the species' symbol is the state itself.
        sp_.setHasOnlySubstanceUnits(True)
        sp_.setBoundaryCondition(False)
        sp_.setConstant(False)
    unknown = sorted(set(parameters or {}) - set(spec.parameters))
    if unknown:
        raise ValueError(f"not parameters of the spec: {', '.join(unknown)}")
    values = {n: p.value for n, p in spec.parameters.items()}
    values.update({n: float(v) for n, v in (parameters or {}).items()})
    values.update({u: float((inputs or {}).get(u, 0.0)) for u in spec.inputs})
    for name, value in values.items():
        p = model.createParameter()
        p.setId(name)
        p.setValue(float(value))
        p.setConstant(True)
    in_reactions: set[str] = set()
    for r in spec.reactions:
        reaction = model.createReaction()
        reaction.setId(_fresh(r.name, taken))
        reaction.setReversible(r.reversible)
        for side, create in (
            (r.reactants, reaction.createReactant),
            (r.products, reaction.createProduct),
        ):
            for s, c in side.items():
                if s not in spec.states:
                    continue  # an input or parameter held constant: it is in the rate only
                ref = create()
                ref.setSpecies(s)
                ref.setStoichiometry(float(c))
                ref.setConstant(True)
                in_reactions.add(s)
        if r.rate is None:
            continue  # a learned flux: a reaction without a kinetic law
        flux = r.flux
        for s in sorted(str(x) for x in flux.free_symbols):
            if s in spec.states and s not in r.reactants and s not in r.products:
                reaction.createModifier().setSpecies(s)
        law = reaction.createKineticLaw()
        law.setMath(_ast(flux, {}))
    for s in spec.states:
        terms = [
            (k, d[s])
            for k, d in (("equation", spec.equations), ("discovered", spec.discovered))
            if s in d
        ]
        if not terms:
            continue
        if s not in in_reactions:
            rule = model.createRateRule()
            rule.setVariable(s)
            rule.setMath(_ast(sp.Add(*(t for _, t in terms)), {}))
            continue
        # SBML allows no rate rule on a species that reactions change: the other terms of its
        # right-hand side become reactions that produce it at that (signed) rate.
        for kind, term in terms:
            reaction = model.createReaction()
            reaction.setId(_fresh(f"{kind}_{s}", taken))
            reaction.setReversible(True)
            ref = reaction.createProduct()
            ref.setSpecies(s)
            ref.setStoichiometry(1.0)
            ref.setConstant(True)
            for x in sorted(str(v) for v in term.free_symbols):
                if x in spec.states and x != s:
                    reaction.createModifier().setSpecies(x)
            reaction.createKineticLaw().setMath(_ast(term, {}))
    for name, expr in spec.observables.items():
        if name in taken:
            continue
        taken.add(name)
        p = model.createParameter()
        p.setId(name)
        p.setConstant(False)
        rule = model.createAssignmentRule()
        rule.setVariable(name)
        rule.setMath(_ast(expr, {}))
    return libsbml.writeSBMLToString(doc)


def write_sbml(
    spec: ModelSpec,
    path: str | Path,
    *,
    initial: dict[str, float] | None = None,
    inputs: dict[str, float] | None = None,
    parameters: dict[str, float] | None = None,
) -> Path:
    """Write ``spec`` (a twin or a symbolic prior) as SBML to ``path``.

    Known reactions are SBML reactions (a neural one without a kinetic law); equation and
    discovered terms are rate rules, or reactions producing the state when reactions also
    change it; parameters and inputs are constant parameters at their values. One condition's
    values can be given: ``parameters`` (e.g. fitted per-condition values; default the spec's),
    ``inputs`` (default 0) and ``initial`` states (default the spec's, else 0). Observables
    are assignment rules; species are amounts in a unit compartment.
    """
    path = Path(path)
    path.write_text(sbml_string(spec, initial=initial, inputs=inputs, parameters=parameters))
    return path


def _notes(spec: ModelSpec) -> str:
    """XHTML notes: where the model comes from and which terms were discovered."""
    lines = [f"Written by ude from the spec '{spec.name}'."]
    if spec.discovered:
        terms = "; ".join(f"d{s}/dt += {format_expression(e)}" for s, e in spec.discovered.items())
        lines.append(f"Terms discovered from data (reactions or rate rules): {terms}.")
    laws = spec.conservation_laws()
    if laws:
        lines.append("Conserved: " + ", ".join(format_law(law) for law in laws) + ".")
    body = "".join(f"<p>{escape(line)}</p>" for line in lines)
    return f'<body xmlns="http://www.w3.org/1999/xhtml">{body}</body>'


def _spec_id(name: str) -> str:
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name) or "model"
    return out if not out[0].isdigit() else f"m_{out}"
