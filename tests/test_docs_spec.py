"""docs/spec.md says what the code reads: its examples load, its files are the repository's,
its error messages are the ones a user gets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ude.data import read_measurements
from ude.errors import UdeError
from ude.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "spec.md"
# <!-- kind: name [spec=... conditions=...] --> then a fenced block
BLOCK = re.compile(r"<!-- (example|file|error): (\S+)((?: \w+=\S+)*) -->\n```\w*\n(.*?)```", re.S)


def blocks(kind: str) -> list[tuple[str, dict[str, str], str]]:
    found = [
        (name, dict(re.findall(r"(\w+)=(\S+)", options)), text)
        for k, name, options, text in BLOCK.findall(DOC.read_text())
        if k == kind
    ]
    assert found, f"docs/spec.md has no {kind} block"
    return found


def load(name: str, options: dict[str, str], folder: Path):
    path = folder / name
    if name.endswith(".csv"):
        spec = folder / options["spec"]
        return read_measurements(path, spec, options.get("conditions"))
    return load_spec(path)


@pytest.fixture
def written(tmp_path, monkeypatch):
    """Every example block written to a folder, which is the working directory."""
    for name, _, text in blocks("example"):
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name, options, text", blocks("file"))
def test_file_blocks_are_the_start_of_the_repository_files(name, options, text):
    assert (ROOT / name).read_text().startswith(text), name


def test_examples_load_or_fail_with_the_documented_message(written):
    errors = {name: text.strip() for name, _, text in blocks("error")}
    for name, options, _ in blocks("example"):
        if name in errors:
            with pytest.raises(UdeError) as err:
                load(name, options, Path("."))
            assert str(err.value) == errors[name]
        else:
            loaded = load(name, options, Path("."))
            assert loaded is not None
    assert set(errors) <= {name for name, _, _ in blocks("example")}


def test_the_long_example_reads_sigma_replicates_and_missing_values(written):
    m = read_measurements("long.csv", "my_model.yaml")
    assert m.conditions == ["control", "treated"] and m.observables == ["x", "y"]
    assert m.times.tolist() == [0.0, 0.5, 0.7]
    assert m.sigma[0, 0, 0].tolist() == [0.02, 0.2]
    # an empty sigma: learned (NaN); an entry nobody measured: missing (NaN)
    assert str(m.sigma[0, 1, 0, 1]) == "nan" and str(m.values[1, 1, 0, 0]) == "nan"


def test_the_spec_examples_hold_what_the_page_says(written):
    spec = load_spec("priors.yaml")
    assert spec.parameters["k"].prior.dist == "lognormal" and spec.parameters["b"].per_condition
    two = load_spec("two_networks.yaml")
    assert [(s.name, s.targets, s.inputs) for s in two.neural] == [
        ("production", ("x",), ("z", "dose")),
        ("feedback", ("y", "z"), ("x", "y", "z")),
    ]
    reactions = load_spec("mass_action.yaml")
    assert [str(e) for e in reactions.known_rhs()] == ["-A*k_r1", "A*k_r1 - 0.1*B"]
    assert set(load_spec("observed.yaml").observables) == {"total", "signal"}


def test_the_library_population_and_doses_docs_describe_what_the_code_reads(tmp_path, make_cfg):
    path = tmp_path / "spec.yaml"
    body = "states: [x, z]\nequations:\n  x: -x\n  z: -z\nneural: {targets: [x]}\n"
    for value, families in [
        ("[mass_action, michaelis_menten]", ["mass_action", "michaelis_menten"]),
        ('{add: ["x*z/(1 + z)"], remove: [hill]}', ["constant", "mass_action", "michaelis_menten"]),
    ]:
        path.write_text(body + f"library: {value}\n")
        from ude.spec.library_key import DEFAULT_FAMILIES

        assert load_spec(path).library.apply(DEFAULT_FAMILIES)[: len(families)] == families
    path.write_text(body + "library: [mass_action, hil]\n")
    with pytest.raises(UdeError, match=r"library\[1\]: unknown family 'hil'"):
        load_spec(path)
    path.write_text(
        "states: [x]\nparameters:\n  ke: {value: 0.3, learn: true, per_condition: true, "
        "population: lognormal, spread: 0.3}\nequations:\n  x: -ke*x\n"
    )
    ke = load_spec(path).parameters["ke"]
    assert (ke.population, ke.spread, ke.value) == ("lognormal", 0.3, 0.3)
    doses = ROOT / "data" / "virtual_population" / "doses.csv"
    assert make_cfg("data=csv", f"data.doses={doses}").data.doses == str(doses)
