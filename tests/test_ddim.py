"""The DDIM transition as a Gaussian: against diffusers' DDIMScheduler.step and by hand."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from training.ddim import ddim_step, pooled_ddim_step, sample_candidates, transition_log_prob


def scheduler(prediction_type: str = "epsilon", **overrides) -> DDIMScheduler:
    config = {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": prediction_type,
    }
    result = DDIMScheduler(**{**config, **overrides})
    result.set_timesteps(20)
    return result


def test_log_prob_matches_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 4, 2, 2, generator=generator)
    x = torch.randn(3, 4, 2, 2, generator=generator)
    std = torch.tensor([0.7, 0.1, 2.0])
    expected = torch.distributions.Normal(mean, std.view(3, 1, 1, 1)).log_prob(x).mean(dim=(1, 2, 3))
    torch.testing.assert_close(transition_log_prob(x, mean, std), expected)


def test_log_prob_of_the_mean_is_the_maximum():
    # At x = mean every element has density 1 / (std sqrt(2 pi)): log = -log(0.5) - 0.5 log(2 pi) = -0.2258.
    mean = torch.zeros(1, 4, 2, 2)
    std = torch.tensor([0.5])
    at_mean = transition_log_prob(mean, mean, std)
    assert at_mean.item() == pytest.approx(-math.log(0.5) - 0.5 * math.log(2 * math.pi))
    # Moving every element by one std costs exactly 0.5 nats per element.
    assert transition_log_prob(mean + 0.5, mean, std).item() == pytest.approx(at_mean.item() - 0.5)
    assert transition_log_prob(mean + 0.01, mean, std).item() < at_mean.item()


@pytest.mark.parametrize(
    ("prediction_type", "overrides"),
    [("epsilon", {}), ("v_prediction", {}), ("sample", {}), ("epsilon", {"clip_sample": True}), ("epsilon", {"set_alpha_to_one": True})],
)
@pytest.mark.parametrize("index", [0, 10, 19])
def test_step_reproduces_diffusers(prediction_type, overrides, index):
    sched = scheduler(prediction_type, **overrides)
    t = int(sched.timesteps[index])
    generator = torch.Generator().manual_seed(index)
    sample, output, noise = (torch.randn(2, 4, 3, 3, generator=generator) for _ in range(3))

    step = ddim_step(sched, output, sample, torch.tensor([t, t]), eta=1.0)
    reference = sched.step(output, t, sample, eta=1.0, variance_noise=noise)
    # float32 in diffusers vs float64 scalars here: "sample" at t=1 divides by sqrt(1 - a_1) ~ 0.03.
    torch.testing.assert_close(step.mean + step.std.view(2, 1, 1, 1) * noise, reference.prev_sample, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(step.pred_x0, reference.pred_original_sample, atol=1e-5, rtol=1e-5)
    assert step.prev_timesteps.tolist() == [t - 50, t - 50]


def test_samples_at_different_timesteps_in_one_batch():
    sched = scheduler()
    ts = [int(sched.timesteps[i]) for i in (0, 7, 19)]
    sample, output = torch.randn(3, 4, 3, 3), torch.randn(3, 4, 3, 3)
    step = ddim_step(sched, output, sample, torch.tensor(ts), eta=1.0)
    for i, t in enumerate(ts):
        alone = ddim_step(sched, output[i : i + 1], sample[i : i + 1], torch.tensor([t]), eta=1.0)
        torch.testing.assert_close(step.mean[i], alone.mean[0])
        torch.testing.assert_close(step.std[i], alone.std[0])


def test_eta_zero_is_deterministic_ddim():
    sched = scheduler()
    t = int(sched.timesteps[5])
    sample, output = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    step = ddim_step(sched, output, sample, torch.tensor([t, t]), eta=0.0)
    assert step.std.tolist() == [0.0, 0.0]
    torch.testing.assert_close(step.mean, sched.step(output, t, sample, eta=0.0).prev_sample, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="eta > 0"):
        pooled_ddim_step(sched, output, sample, torch.tensor([t, t]), eta=0.0, k=4)


def test_pool_candidates_share_the_mean_of_one_state():
    sched = scheduler()
    t = int(sched.timesteps[6])
    generator = torch.Generator().manual_seed(1)
    sample, output = torch.randn(2, 4, 3, 3, generator=generator), torch.randn(2, 4, 3, 3, generator=generator)
    candidates, step = pooled_ddim_step(sched, output, sample, torch.tensor([t, t]), eta=1.0, k=4, generator=generator)
    assert candidates.shape == (2, 4, 4, 3, 3)

    # Each candidate is a diffusers DDIM step from the same x_t with its own noise.
    for chain in range(2):
        for i in range(4):
            noise = (candidates[chain, i] - step.mean[chain]) / step.std[chain]
            reference = sched.step(output[chain : chain + 1], t, sample[chain : chain + 1], eta=1.0, variance_noise=noise[None])
            torch.testing.assert_close(candidates[chain, i], reference.prev_sample[0], atol=1e-5, rtol=1e-5)
    # Independent noise: no two candidates coincide.
    flat = candidates.flatten(2)
    assert torch.cdist(flat[0], flat[0]).add(torch.eye(4) * 1e9).min() > 1e-3

    # Many candidates average back to the shared mean.
    many = sample_candidates(step, 4000, generator)
    torch.testing.assert_close(many.mean(dim=1), step.mean, atol=5 * step.std.max().item() / math.sqrt(4000), rtol=0)
