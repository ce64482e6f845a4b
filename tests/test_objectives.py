"""The objective interface: DDPM and flow matching behind one protocol, built from saved settings."""
import dataclasses

import pytest
import torch

from vlgen.diffusion import GaussianDiffusion, create_diffusion
from vlgen.objectives import KINDS, SETTINGS, Objective, create_objective
from vlgen.training.config import ObjectiveConfig
from vlgen.transport import Transport


def settings(kind, **changes):
    return {**dataclasses.asdict(ObjectiveConfig(kind=kind)), **changes}


@pytest.mark.parametrize("kind, learn_sigma, cls, prediction, sampler", [
    ("ddpm", True, GaussianDiffusion, "eps", "dpm-solver++"),
    ("flow", False, Transport, "velocity", "flow-euler"),
])
def test_both_objectives_implement_the_interface(kind, learn_sigma, cls, prediction, sampler):
    objective = create_objective(settings(kind), learn_sigma)
    assert isinstance(objective, cls) and isinstance(objective, Objective)
    assert (objective.kind, objective.prediction, objective.default_sampler) == (kind, prediction, sampler)
    t = objective.sample_times(16, "cpu", torch.Generator().manual_seed(0))
    assert t.shape == (16,)
    x = torch.randn(16, 2, 4, 4)

    def model(x_t, times, y):
        return torch.zeros(x_t.shape[0], 2 * x_t.shape[1] if learn_sigma else x_t.shape[1], *x_t.shape[2:])

    losses = objective.training_losses(model, x, t, torch.randn_like(x), y=torch.zeros(16, dtype=torch.long))
    assert losses["loss"].shape == (16,) and torch.isfinite(losses["loss"]).all()


def test_every_setting_key_is_a_config_key_and_each_kind_is_built():
    fields = {f.name for f in dataclasses.fields(ObjectiveConfig)}
    assert set(KINDS) == set(SETTINGS)
    assert all(set(keys) <= fields for keys in SETTINGS.values())


def test_given_settings_are_used_and_missing_ones_take_the_objectives_defaults():
    ddpm = create_objective(settings("ddpm", prediction="v", noise_schedule="cosine", diffusion_steps=100), True)
    reference = create_diffusion(noise_schedule="cosine", diffusion_steps=100, prediction="v")
    assert ddpm.prediction == "v" and ddpm.num_timesteps == 100
    assert torch.equal(ddpm.tables.betas, reference.tables.betas)
    flow = create_objective({"kind": "flow", "path": "GVP", "prediction": "noise"}, False)
    assert (flow.path_type, flow.prediction) == ("GVP", "noise")
    assert flow.train_eps == Transport("GVP", "noise").train_eps == 1e-3  # SiT's default for noise prediction
    assert create_objective({"kind": "flow"}, False).prediction == Transport().prediction


def test_unfit_settings_are_clear_errors():
    with pytest.raises(ValueError, match="unknown objective kind 'gan'"):
        create_objective({"kind": "gan"}, False)
    with pytest.raises(ValueError, match="flow objective trains a model without learned-sigma"):
        create_objective(settings("flow"), True)


def test_schedule_tables_are_named_fields_copied_once_per_device():
    diffusion = create_diffusion("10")
    assert diffusion.tables.alphas_cumprod.dtype == torch.float64 and len(diffusion.tables.betas) == 10
    assert diffusion.tables_on("cpu") is diffusion.tables_on(torch.device("cpu"))
    with pytest.raises(AttributeError):
        diffusion.tables.alpha_cumprod  # a misspelt table is an attribute error, not a missing key
