"""Parameter priors in the spec and their negative log density in SpecParameters."""

import math

import pytest
import torch
from scipy import stats

from ude.errors import UdeError
from ude.model.parameters import SpecParameters
from ude.spec import ModelSpec


def spec(parameters):
    return ModelSpec.from_dict(
        {"states": ["x"], "parameters": parameters, "equations": {"x": "-x"}}, source="p.yaml"
    )


PARAMS = {
    "a": {"value": 1.5, "learn": True, "prior": {"dist": "normal", "mean": 1.0, "sd": 0.5}},
    "b": {
        "value": 0.4,
        "learn": True,
        "min": 0,
        "per_condition": True,
        "prior": {"dist": "lognormal", "median": 0.3, "sigma": 0.7},
    },
    "c": {"value": 2.0, "learn": True, "min": 0, "max": 5},
    "d": 3.0,
}


def test_prior_nll_is_the_negative_log_density_of_the_values():
    params = SpecParameters(spec(PARAMS).parameters, n_conditions=3)
    with torch.no_grad():
        params.learned["b"].copy_(torch.log(torch.tensor([0.2, 0.4, 0.9])))
    expected = -stats.norm(1.0, 0.5).logpdf(1.5)
    expected -= sum(stats.lognorm(s=0.7, scale=0.3).logpdf(v) for v in (0.2, 0.4, 0.9))
    assert params.prior_nll().item() == pytest.approx(expected, rel=1e-5)


def test_prior_pulls_a_learned_value_towards_its_mean():
    params = SpecParameters(spec(PARAMS).parameters, n_conditions=1)
    params.prior_nll().backward()
    # a = 1.5 sits above the prior mean 1.0: descending the gradient lowers it.
    assert params.learned["a"].grad.item() == pytest.approx((1.5 - 1.0) / 0.5**2)
    assert params.learned["c"].grad is None  # no prior on c


def test_no_priors_give_zero():
    params = SpecParameters(spec({"a": {"value": 1.0, "learn": True}}).parameters, 2)
    assert params.prior_nll().item() == 0.0


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"value": 1.0, "prior": {"dist": "normal", "mean": 1, "sd": 1}}, "fixed parameter"),
        ({"value": 1.0, "learn": True, "prior": {"dist": "cauchy"}}, "expected a prior"),
        ({"value": 1.0, "learn": True, "prior": {"dist": "normal", "mean": 1}}, "'sd'"),
        (
            {"value": 1.0, "learn": True, "prior": {"dist": "normal", "mean": 1, "sd": -1}},
            "must be positive",
        ),
        (
            {"value": 1.0, "learn": True, "prior": {"dist": "lognormal", "median": 1, "sigma": 1}},
            "needs a positive parameter",
        ),
    ],
)
def test_bad_priors_are_refused(entry, message):
    with pytest.raises(UdeError, match="parameters.a.prior") as err:
        spec({"a": entry})
    assert message in str(err.value)


def test_priors_survive_the_spec_dict():
    s = spec(PARAMS)
    again = ModelSpec.from_dict(s.to_dict())
    assert again.parameters == s.parameters
    assert math.isclose(again.parameters["b"].prior.scale, 0.7)
