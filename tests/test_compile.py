import numpy as np
import sympy as sp
import torch

from ude.spec.compile import CompiledExpressions


def test_compiled_values_match_sympy_on_random_points():
    x, y, a = sp.symbols("x y a")
    exprs = [
        a * x - x * y,
        x**2 / (a**2 + x**2) + sp.exp(-y),
        sp.Integer(3),
        sp.sqrt(x) * sp.log(y),
    ]
    f = CompiledExpressions(exprs, ["x", "y", "a"]).double()
    values = torch.rand(16, 3, dtype=torch.float64) + 0.1
    got = f(values).numpy()
    want = [[float(e.subs({x: r[0], y: r[1], a: r[2]})) for e in exprs] for r in values.tolist()]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_compiled_gradients_match_finite_differences():
    x, y, a = sp.symbols("x y a")
    f = CompiledExpressions([a * x / (1 + y**2), sp.tanh(x * y) - a], ["x", "y", "a"]).double()
    values = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (values,))
