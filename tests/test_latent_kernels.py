"""The warm start's compiled latent paths (ude.train.latent_kernels) take the torch path's
steps: the same states and the same gradients, in the initial values, the learned parameters
and the networks' weights."""

import pytest
import torch

from ude import Solver, build_hybrid, simulate_measurements
from ude.train.warm_start import LatentPaths, gradient_matching, smooth_states

# SEIR's exposed pool latent, with a network on it besides the infection flux, a learned
# parameter per condition and a bounded one inside its known terms
_SPEC = """
name: latent_check
states: [S, E, I, R]
nonnegative: [S, E, I, R]
parameters:
  sigma: {value: 0.2, learn: true, per_condition: true}
  gamma: {value: 0.25, learn: true, min: 0}
equations:
  E: -sigma*E/(1 + gamma*E)
  I: sigma*E - gamma*I
  R: gamma*I
reactions: ["infection: S -> E; neural"]
neural: {targets: [E], inputs: [E, I]}
"""


def _seir(tmp_path, nonnegative_fluxes: bool):
    spec = tmp_path / "spec.yaml"
    spec.write_text(_SPEC)
    m = simulate_measurements("seir", noise=0.02, n_times=31)
    torch.manual_seed(0)
    model = build_hybrid(
        str(spec), m, Solver(), activation="silu", nonnegative_fluxes=nonnegative_fluxes
    )
    with torch.no_grad():  # away from the initial values, so that every gradient is in play
        for p in model.parameters_.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model, smooth_states(m, ["S", "E", "I", "R"])


def _goldbeter():
    m = simulate_measurements("goldbeter", noise=0.02, n_times=31, observed=["C"])
    torch.manual_seed(0)
    return build_hybrid("goldbeter", m, Solver()), smooth_states(m, ["C", "M", "X"])


def _evaluate(model, smoothed, compiled: bool):
    """The states along the grid and the gradients of a weighted sum of them."""
    paths = LatentPaths(model, smoothed)
    paths.compiled = compiled
    model.zero_grad()
    y = torch.as_tensor(smoothed.y)
    states = paths.states(y, model.context(torch.as_tensor(smoothed.condition)))
    weights = torch.randn(states.shape, generator=torch.Generator().manual_seed(1))
    (states[:, paths.latent] * weights[:, paths.latent]).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return states.detach(), paths.start.grad.clone(), grads


def _same(model, smoothed):
    states, start, grads = _evaluate(model, smoothed, compiled=False)
    states_c, start_c, grads_c = _evaluate(model, smoothed, compiled=True)
    torch.testing.assert_close(states_c, states, rtol=1e-12, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(start_c, start, rtol=1e-10, atol=1e-12)
    assert grads_c.keys() == grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(grads_c[name], g, rtol=1e-10, atol=1e-12, msg=name)
    return grads


@pytest.mark.parametrize("nonnegative_fluxes", [False, True])
def test_compiled_paths_match_torch_with_networks_on_a_latent_state(
    tmp_path, float64, nonnegative_fluxes
):
    model, smoothed = _seir(tmp_path, nonnegative_fluxes)
    grads = _same(model, smoothed)
    # the latent path reaches all of them: the networks through E's slope, the parameters
    # through E's and its context's
    for name in ["parameters_.learned.sigma", "parameters_.learned.gamma"]:
        assert grads[name].abs().max() > 0, name
    assert any(n.startswith("networks.0") and g.abs().max() > 0 for n, g in grads.items())
    assert any(n.startswith("networks.1") and g.abs().max() > 0 for n, g in grads.items())


def test_compiled_paths_match_torch_on_known_latent_kinetics(float64):
    """Goldbeter with its two fractions latent: their rate laws are known, no network."""
    model, smoothed = _goldbeter()
    paths = LatentPaths(model, smoothed)
    assert not paths.neural and paths.compiled
    _same(model, smoothed)


def test_a_warm_start_on_the_compiled_paths_takes_the_torch_path_s_steps(float64, monkeypatch):
    """Twenty steps of gradient matching end on the same model either way."""
    original = LatentPaths.__init__
    finals = []
    for compiled in [False, True]:

        def init(self, *args, compiled=compiled):
            original(self, *args)
            self.compiled = compiled

        monkeypatch.setattr(LatentPaths, "__init__", init)
        model, smoothed = _goldbeter()
        gradient_matching(model, smoothed, steps=20)
        finals.append({k: v.clone() for k, v in model.state_dict().items()})
    for key, value in finals[0].items():
        torch.testing.assert_close(finals[1][key], value, rtol=1e-8, atol=1e-10, msg=key)
