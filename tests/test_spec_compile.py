"""The sympy -> torch compile: values, batching and gradients (finite differences)."""

from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch

from ude.spec import CompiledExpressions, ModelSpec, load_spec
from ude.spec.expressions import parse_expression

ENZYME = Path(__file__).resolve().parents[1] / "examples" / "enzyme_kinetics" / "enzyme.yaml"
NAMES = ["x", "y", "z", "a", "b", "n"]
EXPRESSIONS = [
    "a*x - b*x*y",
    "-x**2*y + 3*y**3/(1 + z**4) - 2.5",
    "hill(x, a, n) - mm(y, b) + exp(-z) * log(1 + x)",
    "sqrt(x*y) + tanh(a - z) + x**(-2) - 1/(a + b)",
    "x**1.7 + 2**z + x**n + (y + z)**-3",
    "7",
    "z",
    "0*x",
]


def reference(exprs, values):
    f = sp.lambdify([sp.Symbol(n) for n in NAMES], exprs, modules="numpy")
    return np.stack(
        [
            np.broadcast_to(np.asarray(v, dtype=float), values.shape[:-1])
            for v in f(*np.moveaxis(values, -1, 0))
        ],
        axis=-1,
    )


@pytest.fixture
def compiled():
    exprs = [parse_expression(e, NAMES) for e in EXPRESSIONS]
    return exprs, CompiledExpressions(exprs, NAMES).double()


def test_values_match_sympy_on_any_batch_shape(compiled):
    exprs, f = compiled
    rng = np.random.default_rng(1)
    for shape in [(len(NAMES),), (5, len(NAMES)), (3, 7, len(NAMES))]:
        values = rng.uniform(0.2, 2.0, size=shape)
        out = f(torch.from_numpy(values)).numpy()
        assert out.shape == (*shape[:-1], len(exprs))
        np.testing.assert_allclose(out, reference(exprs, values), rtol=1e-12)


def test_gradients_match_finite_differences(compiled):
    _, f = compiled
    rng = np.random.default_rng(2)
    values = torch.from_numpy(rng.uniform(0.3, 2.0, size=(4, len(NAMES)))).requires_grad_(True)
    assert torch.autograd.gradcheck(f, (values,), eps=1e-6, atol=1e-7, rtol=1e-6)
    assert torch.autograd.gradgradcheck(f, (values,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_reaction_network_rhs_batched_over_conditions_with_gradients():
    enzyme = load_spec(ENZYME)
    f = CompiledExpressions(enzyme.known_rhs(), enzyme.symbols).double()
    # Two conditions with different parameter values, three times each: (condition, time, .)
    rng = np.random.default_rng(3)
    values = torch.from_numpy(rng.uniform(0.1, 5.0, size=(2, 3, len(enzyme.symbols))))
    out = f(values)
    f_ref = sp.lambdify([sp.Symbol(s) for s in enzyme.symbols], enzyme.known_rhs())
    for c in range(2):
        for t in range(3):
            np.testing.assert_allclose(out[c, t].numpy(), f_ref(*values[c, t].numpy()))
    assert torch.autograd.gradcheck(f, (values.requires_grad_(True),))


def test_the_tape_is_short():
    # Weighted sums and two-factor products fuse (add with alpha, addcmul): the enzyme
    # network's four right-hand sides take fewer torch calls than they have terms.
    enzyme = load_spec(ENZYME)
    f = CompiledExpressions(enzyme.known_rhs(), enzyme.symbols)
    terms = sum(len(sp.Add.make_args(e)) for e in enzyme.known_rhs())
    assert f.n_steps < terms


def test_undeclared_names_and_unsupported_functions_are_refused():
    x, w = sp.symbols("x w")
    with pytest.raises(ValueError, match="undeclared names: w"):
        CompiledExpressions([x + w], ["x"])
    with pytest.raises(ValueError, match="cannot compile"):
        CompiledExpressions([sp.gamma(x)], ["x"])


def test_empty_spec_compiles():
    spec = ModelSpec(states=["x"])
    f = CompiledExpressions(spec.known_rhs(), spec.symbols)
    assert torch.equal(f(torch.ones(3, 1)), torch.zeros(3, 1))
    assert CompiledExpressions([], ["x"])(torch.ones(2, 1)).shape == (2, 0)
