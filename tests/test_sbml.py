"""SBML in and out: round trips, libroadrunner agreement, refusals, the export CLI."""

from pathlib import Path

import numpy as np
import pytest
import sympy as sp

from ude.errors import UdeError
from ude.spec import ModelSpec, load_spec, simulate_spec
from ude.spec.__main__ import main as spec_cli
from ude.spec.compile import CompiledExpressions
from ude.spec.sbml import read_sbml, sbml_string, write_sbml

libsbml = pytest.importorskip("libsbml")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "enzyme_kinetics"

MIXED = {
    "name": "mixed",
    "states": ["A", "B", "X"],
    "inputs": ["u"],
    "parameters": {
        "k_r1_f": 2.0,
        "k_r1_r": 0.5,
        "K": {"value": 0.3, "learn": True, "min": 0},
        "d": 0.1,
    },
    "reactions": ["A <-> 2 B", "deg: B -> 0; d*B", "make: u -> X; mm(u, K)"],
    "equations": {"B": "-d*B*X", "A": "0.1*exp(-X)"},
    "discovered": {
        "X": "-0.25*X**2 + sqrt(A + 1) + tanh(A)/3 - log(1 + B) + hill(A, K, 2.5) + X**1.7"
    },
    "observables": {"total": "A + 2*B"},
    "initial": {"A": 1.0, "B": 0.5},
}


def same_rhs(a: ModelSpec, b: ModelSpec, n: int = 20) -> None:
    """Symbolically equal, and equal on random states, inputs and parameters."""
    assert a.states == b.states
    for ea, eb in zip(a.known_rhs(), b.known_rhs(), strict=True):
        assert sp.simplify(ea - eb) == 0, (ea, eb)
    rng = np.random.default_rng(0)
    names = sorted(set(a.symbols) | set(b.symbols))
    values = rng.uniform(0.1, 3.0, size=(n, len(names)))
    fa = CompiledExpressions(a.known_rhs(), names).double()
    fb = CompiledExpressions(b.known_rhs(), names).double()
    import torch

    v = torch.from_numpy(values)
    np.testing.assert_allclose(fa(v).numpy(), fb(v).numpy(), rtol=1e-12, atol=1e-12)


def no_errors(text: str) -> None:
    doc = libsbml.readSBMLFromString(text)
    doc.setConsistencyChecks(libsbml.LIBSBML_CAT_UNITS_CONSISTENCY, False)
    doc.checkConsistency()
    errors = [
        doc.getError(i).getMessage()
        for i in range(doc.getNumErrors())
        if doc.getError(i).getSeverity() >= libsbml.LIBSBML_SEV_ERROR
    ]
    assert errors == []


@pytest.mark.parametrize(
    "source",
    [EXAMPLES / "enzyme.yaml", EXAMPLES / "enzyme_known.yaml", "truth:lotka_volterra", "mixed"],
)
def test_round_trip_spec_sbml_spec_keeps_the_right_hand_side(source):
    if source == "mixed":
        spec = ModelSpec.from_dict(MIXED, source="mixed.yaml")
    elif str(source).startswith("truth:"):
        from ude.systems import get_system

        spec = get_system(str(source)[6:]).truth
    else:
        spec = load_spec(source)
    text = sbml_string(spec)
    no_errors(text)
    back = read_sbml("roundtrip.xml", text=text)
    same_rhs(spec, back)
    assert {k: p.value for k, p in back.parameters.items() if k not in spec.inputs} == {
        k: p.value for k, p in spec.parameters.items()
    }
    assert [s.stoichiometry for s in back.neural] == [s.stoichiometry for s in spec.neural]
    for name, expr in spec.observables.items():
        assert sp.simplify(back.observables[name] - expr) == 0


def test_enzyme_as_reactions_and_as_sbml_is_the_same_model():
    same_rhs(load_spec(EXAMPLES / "enzyme.yaml"), load_spec(EXAMPLES / "enzyme.xml"))
    yaml_known = load_spec(EXAMPLES / "enzyme_known.yaml")
    sbml_known = load_spec(EXAMPLES / "enzyme_known.xml")
    same_rhs(yaml_known, sbml_known)
    assert sbml_known.neural[0].stoichiometry == yaml_known.neural[0].stoichiometry
    assert sbml_known.initial == yaml_known.initial
    assert sbml_known.conservation_laws() == yaml_known.conservation_laws()


def lv_twin() -> ModelSpec:
    """A hand-built Lotka-Volterra twin: known terms, discovered terms, fitted parameters."""
    known = ModelSpec.from_dict(
        {
            "states": ["x", "y"],
            "parameters": {
                "alpha": {"value": 1.3, "learn": True, "min": 0},
                "delta": {"value": 1.8, "learn": True, "min": 0},
            },
            "equations": {"x": "alpha*x", "y": "-delta*y"},
            "neural": {"targets": ["x", "y"]},
        }
    )
    x, y = sp.symbols("x y")
    fitted = {
        "alpha": known.parameters["alpha"].__class__(value=1.2987, learn=True, min=0.0),
        "delta": known.parameters["delta"].__class__(value=1.8023, learn=True, min=0.0),
    }
    return known.with_discovered({"x": -0.9 * x * y, "y": 0.8 * x * y}, fitted)


@pytest.mark.parametrize("case", ["lotka_volterra", "enzyme", "mixed"])
def test_twin_sbml_in_libroadrunner_matches_simulate_spec(tmp_path, case):
    roadrunner = pytest.importorskip("roadrunner")
    inputs = None
    if case == "lotka_volterra":
        twin, x0, t_end = lv_twin(), {"x": 0.44249296, "y": 4.6280594}, 3.0
    elif case == "enzyme":
        twin = load_spec(EXAMPLES / "enzyme.yaml")
        x0, t_end = twin.initial, 40.0
    else:  # reactions, rate rules, extra terms on reacting species, an input
        twin = ModelSpec.from_dict(MIXED, source="mixed.yaml")
        x0, t_end, inputs = {"A": 1.0, "B": 0.5, "X": 0.1}, 5.0, {"u": 0.7}
    path = write_sbml(twin, tmp_path / "twin.sbml", initial=x0, inputs=inputs)
    rr = roadrunner.RoadRunner(str(path))
    rr.integrator.relative_tolerance = 1e-10
    rr.integrator.absolute_tolerance = 1e-12
    rr.timeCourseSelections = ["time", *twin.states]
    result = np.asarray(rr.simulate(0.0, t_end, 31))
    u = np.array([[inputs[k] for k in twin.inputs]]) if inputs else None
    ours = simulate_spec(twin, np.array([[x0[s] for s in twin.states]]), result[:, 0], u)[0]
    rel = np.abs(result[:, 1:] - ours) / np.maximum(np.abs(ours), 1e-3 * np.abs(ours).max())
    assert rel.max() < 1e-4


def sbml(body: str, extra_model: str = "") -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<sbml xmlns="http://www.sbml.org/sbml/level3/version2/core" level="3" version="2">
  <model id="m">
    {extra_model}
    <listOfCompartments>
      <compartment id="c" size="1" constant="true"/>
    </listOfCompartments>
    <listOfSpecies>
      <species id="A" compartment="c" initialConcentration="1" hasOnlySubstanceUnits="false"
        boundaryCondition="false" constant="false"/>
    </listOfSpecies>
    <listOfParameters>
      <parameter id="k" value="2" constant="true"/>
    </listOfParameters>
    {body}
  </model>
</sbml>"""


def rate_rule(math: str) -> str:
    return f"""<listOfRules><rateRule variable="A">
      <math xmlns="http://www.w3.org/1998/Math/MathML">{math}</math></rateRule></listOfRules>"""


@pytest.mark.parametrize(
    "text, message",
    [
        (
            sbml(
                """<listOfEvents><event id="dose" useValuesFromTriggerTime="true">
          <trigger initialValue="true" persistent="true">
          <math xmlns="http://www.w3.org/1998/Math/MathML"><true/></math></trigger>
          </event></listOfEvents>"""
            ),
            "event 'dose': events are not supported",
        ),
        (
            sbml(
                """<listOfRules><algebraicRule>
          <math xmlns="http://www.w3.org/1998/Math/MathML"><apply><minus/><ci>A</ci><ci>k</ci>
          </apply></math></algebraicRule></listOfRules>"""
            ),
            "algebraic rules are not supported",
        ),
        (
            sbml(
                rate_rule(
                    """<apply><csymbol encoding="text"
            definitionURL="http://www.sbml.org/sbml/symbols/delay">delay</csymbol>
            <ci>A</ci><cn>1</cn></apply>"""
                )
            ),
            "rateRule 'A': uses delay",
        ),
        (
            sbml(
                rate_rule(
                    """<piecewise><piece><ci>k</ci><apply><gt/><ci>A</ci><cn>1</cn></apply>
            </piece><otherwise><cn>0</cn></otherwise></piecewise>"""
                )
            ),
            "uses piecewise",
        ),
        (sbml(rate_rule("<apply><sin/><ci>A</ci></apply>")), "uses MathML 'sin'"),
        (
            sbml(
                rate_rule(
                    """<apply><times/><ci>k</ci><csymbol encoding="text"
            definitionURL="http://www.sbml.org/sbml/symbols/time">t</csymbol></apply>"""
                )
            ),
            "uses time",
        ),
        (sbml(rate_rule("<apply><ci>f</ci><ci>A</ci></apply>")), "calls 'f'"),
        (sbml(rate_rule("<ci>nope</ci>")), "uses 'nope'"),
        ("<sbml>", "not valid SBML"),
    ],
)
def test_unsupported_sbml_is_refused_naming_the_element(text, message):
    with pytest.raises(UdeError, match="model.xml") as err:
        read_sbml("model.xml", text=text)
    assert message in str(err.value)


def test_external_entities_are_never_resolved(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    text = sbml(rate_rule("<ci>k</ci>")).replace(
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<?xml version="1.0"?>\n<!DOCTYPE sbml [<!ENTITY xxe SYSTEM "file://{secret}">]>',
    )
    text = text.replace('<model id="m">', '<model id="m" name="&xxe;">')
    path = tmp_path / "evil.xml"
    path.write_text(text)
    with pytest.raises(UdeError, match="DOCTYPE") as err:
        load_spec(path)
    assert "s3cret" not in str(err.value)


def test_function_definitions_local_parameters_and_assignment_rules_are_inlined():
    text = sbml(
        """<listOfRules>
      <assignmentRule variable="obs"><math xmlns="http://www.w3.org/1998/Math/MathML">
        <apply><times/><cn>2</cn><ci>A</ci></apply></math></assignmentRule>
      </listOfRules>
      <listOfReactions><reaction id="deg" reversible="false">
        <listOfReactants><speciesReference species="A" stoichiometry="1" constant="true"/>
        </listOfReactants>
        <kineticLaw><math xmlns="http://www.w3.org/1998/Math/MathML">
          <apply><times/><ci>c</ci><apply><ci>sat</ci><ci>obs</ci><ci>K</ci></apply></apply>
        </math><listOfLocalParameters><localParameter id="K" value="0.5"/>
        </listOfLocalParameters></kineticLaw></reaction></listOfReactions>""",
        extra_model="""<listOfFunctionDefinitions><functionDefinition id="sat">
      <math xmlns="http://www.w3.org/1998/Math/MathML"><lambda><bvar><ci>x</ci></bvar>
      <bvar><ci>K</ci></bvar><apply><divide/><ci>x</ci><apply><plus/><ci>K</ci><ci>x</ci>
      </apply></apply></lambda></math></functionDefinition></listOfFunctionDefinitions>""",
    ).replace(
        '<parameter id="k" value="2" constant="true"/>',
        '<parameter id="k" value="2" constant="true"/><parameter id="obs" constant="false"/>',
    )
    spec = read_sbml("m.xml", text=text)
    a, kk = sp.symbols("A deg_K")
    assert sp.simplify(spec.known_rhs()[0] + 2 * a / (kk + 2 * a)) == 0
    assert spec.parameters["deg_K"].value == 0.5
    assert list(spec.observables) == ["obs"]
    assert sp.simplify(spec.observables["obs"] - 2 * a) == 0


def test_compartment_sizes_and_boundary_species():
    text = sbml(
        """<listOfReactions><reaction id="make" reversible="false">
        <listOfReactants><speciesReference species="Src" stoichiometry="1" constant="true"/>
        </listOfReactants>
        <listOfProducts><speciesReference species="A" stoichiometry="2" constant="true"/>
        </listOfProducts>
        <kineticLaw><math xmlns="http://www.w3.org/1998/Math/MathML">
          <apply><times/><ci>c</ci><ci>k</ci><ci>Src</ci></apply>
        </math></kineticLaw></reaction></listOfReactions>"""
    )
    text = text.replace('size="1"', 'size="4"').replace(
        "</listOfSpecies>",
        """<species id="Src" compartment="c" initialConcentration="3" hasOnlySubstanceUnits="false"
        boundaryCondition="true" constant="false"/></listOfSpecies>""",
    )
    spec = read_sbml("m.xml", text=text)
    assert spec.states == ["A"] and spec.parameters["Src"].value == 3.0
    # d[A]/dt = 2 * (c k Src) / c: the compartment size cancels.
    k, src = sp.symbols("k Src")
    assert sp.simplify(spec.known_rhs()[0] - 2 * k * src) == 0


def test_reactions_and_species_can_be_marked_neural():
    spec = read_sbml(EXAMPLES / "enzyme.xml", neural=["catalysis"])
    assert spec.neural[0].reactions == ("catalysis",)
    assert "k_cat" not in str(spec.known_rhs())
    spec = read_sbml(EXAMPLES / "enzyme.xml", neural=["P"])
    assert spec.neural[0].targets == ("P",)
    with pytest.raises(UdeError, match="neural 'nope'"):
        read_sbml(EXAMPLES / "enzyme.xml", neural=["nope"])


def test_neural_inputs_say_what_the_reactions_network_sees(tmp_path):
    """`neural_inputs` narrows the neural reactions' network to the states it lists (the
    default is every state); a name that is no state, or no neural reaction, is one line."""
    xml = (EXAMPLES / "enzyme.xml").resolve()
    path = tmp_path / "m.yaml"
    path.write_text(f"sbml: {xml}\nneural_reactions: [catalysis]\nneural_inputs: [C]\n")
    spec = load_spec(path)
    assert spec.neural[0].reactions == ("catalysis",) and spec.neural[0].inputs == ("C",)
    path.write_text(f"sbml: {xml}\nneural_reactions: [catalysis]\n")
    assert len(load_spec(path).neural[0].inputs) == len(spec.states) > 1
    path.write_text(f"sbml: {xml}\nneural_reactions: [catalysis]\nneural_inputs: [Q]\n")
    with pytest.raises(UdeError, match=r"neural_inputs\[0\].*'Q' is not a state"):
        load_spec(path)
    path.write_text(f"sbml: {xml}\nneural_inputs: [C]\n")
    with pytest.raises(UdeError, match="neural_inputs.*no neural reactions"):
        load_spec(path)


def test_per_state_networks_cannot_be_exported():
    with pytest.raises(UdeError, match="neural terms on x, y"):
        sbml_string(load_spec("lotka_volterra"))


def test_export_cli(tmp_path, capsys):
    out = tmp_path / "enzyme.xml"
    assert spec_cli(["export", str(EXAMPLES / "enzyme.yaml"), "-o", str(out)]) == 0
    same_rhs(load_spec(EXAMPLES / "enzyme.yaml"), load_spec(out))
    assert spec_cli(["export", str(tmp_path / "missing.yaml"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing.yaml" in err and "\n" not in err
    assert spec_cli(["check", str(EXAMPLES / "enzyme.yaml")]) == 0
    assert "E + C" in capsys.readouterr().out


def test_older_sbml_levels_and_local_parameters():
    doc = libsbml.readSBMLFromFile(str(EXAMPLES / "enzyme.xml"))
    law = doc.getModel().getReaction("catalysis").getKineticLaw()
    local = law.createLocalParameter()
    local.setId("kc")
    local.setValue(0.3)
    law.setMath(libsbml.parseL3Formula("cell * kc * C"))
    for level, version in [(2, 4), (2, 1), (1, 2)]:
        old = doc.clone()
        assert old.setLevelAndVersion(level, version, False)
        spec = read_sbml("old.xml", text=libsbml.writeSBMLToString(old))
        assert spec.parameters["catalysis_kc"].value == 0.3
        expected = load_spec(EXAMPLES / "enzyme.yaml").known_rhs()
        got = [e.subs("catalysis_kc", sp.Symbol("k_cat")) for e in spec.known_rhs()]
        assert [sp.expand(a - b) for a, b in zip(got, expected, strict=True)] == [0] * 4


def test_required_packages_are_refused():
    doc = libsbml.SBMLDocument(libsbml.SBMLNamespaces(3, 1, "comp", 1))
    doc.setPackageRequired("comp", True)
    doc.createModel().setId("m")
    with pytest.raises(UdeError, match="package 'comp'"):
        read_sbml("comp.xml", text=libsbml.writeSBMLToString(doc))


def test_one_conditions_fitted_values_go_into_the_file():
    twin = lv_twin()
    text = sbml_string(twin, parameters={"alpha": 1.5}, initial={"x": 2.0, "y": 1.0})
    back = read_sbml("twin.xml", text=text)
    assert back.parameters["alpha"].value == 1.5
    assert back.parameters["delta"].value == twin.parameters["delta"].value
    assert back.initial == {"x": 2.0, "y": 1.0}
    with pytest.raises(ValueError, match="not parameters of the spec: beta"):
        sbml_string(twin, parameters={"beta": 1.0})


def test_function_definitions_that_multiply_are_cut_off():
    # f_i(x) = f_{i-1}(f_{i-1}(x)): 2**40 inlined calls, a billion laughs in MathML.
    defs = [
        "<functionDefinition id='f0'><math xmlns='http://www.w3.org/1998/Math/MathML'>"
        "<lambda><bvar><ci>x</ci></bvar><apply><times/><ci>x</ci><ci>x</ci></apply>"
        "</lambda></math></functionDefinition>"
    ]
    for i in range(1, 41):
        defs.append(
            f"<functionDefinition id='f{i}'><math xmlns='http://www.w3.org/1998/Math/MathML'>"
            f"<lambda><bvar><ci>x</ci></bvar><apply><ci>f{i - 1}</ci><apply><ci>f{i - 1}</ci>"
            "<ci>x</ci></apply></apply></lambda></math></functionDefinition>"
        )
    text = sbml(
        rate_rule("<apply><ci>f40</ci><ci>A</ci></apply>"),
        extra_model=f"<listOfFunctionDefinitions>{''.join(defs)}</listOfFunctionDefinitions>",
    )
    with pytest.raises(UdeError, match="more than 10000 function calls"):
        read_sbml("laughs.xml", text=text)
    deep = "<apply><minus/>" * 300 + "<ci>A</ci>" + "</apply>" * 300
    with pytest.raises(UdeError, match="nested"):
        read_sbml("deep.xml", text=sbml(rate_rule(deep)))


def test_assignment_rules_that_multiply_are_cut_off():
    # a_i = a_{i-1} + k*exp(a_{i-1}): each rule doubles the written-out expression.
    rules, params = [], []
    for i in range(1, 41):
        prev = "A" if i == 1 else f"a{i - 1}"
        rules.append(
            f"<assignmentRule variable='a{i}'><math xmlns='http://www.w3.org/1998/Math/MathML'>"
            f"<apply><plus/><ci>{prev}</ci><apply><times/><ci>k</ci><apply><exp/><ci>{prev}</ci>"
            "</apply></apply></apply></math></assignmentRule>"
        )
        params.append(f"<parameter id='a{i}' constant='false'/>")
    body = rate_rule("<ci>a40</ci>").replace("<listOfRules>", "<listOfRules>" + "".join(rules))
    text = sbml(body).replace("</listOfParameters>", "".join(params) + "</listOfParameters>")
    with pytest.raises(UdeError, match="expands to more than 100000 terms"):
        read_sbml("rules.xml", text=text)
