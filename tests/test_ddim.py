"""The DDIM transition as a Gaussian: against diffusers' DDIMScheduler.step and by hand."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from training.ddim import ddim_step, transition_log_prob, transition_std


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


def test_transition_std_is_the_steps_std_before_sampling():
    sched = scheduler()
    timesteps = sched.timesteps
    output, sample = torch.randn(len(timesteps), 4, 2, 2), torch.randn(len(timesteps), 4, 2, 2)
    for eta in (0.0, 0.5, 1.0):
        torch.testing.assert_close(transition_std(sched, timesteps, eta), ddim_step(sched, output, sample, timesteps, eta).std)
    # The last step of 20 goes from t = 1 to alphas_cumprod[0] (set_alpha_to_one off): still stochastic.
    assert transition_std(sched, timesteps, 1.0).min() > 0
    final_one = scheduler(set_alpha_to_one=True)
    assert transition_std(final_one, final_one.timesteps, 1.0)[-1] == 0
