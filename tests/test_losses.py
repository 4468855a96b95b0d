"""Preference losses, checked against arithmetic worked out by hand in each docstring."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    denoising_error,
    diffusion_dpo_loss,
    pairwise_preference_loss,
    sft_loss,
    spo_step_loss,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_dpo_sign_model_that_prefers_the_winner_beats_log2():
    """e_w = 0.10, e_l = 0.20, r_w = r_l = 0.15, beta = 100.

    The model lowered the winner's error relative to the reference:
    inside = -0.5 * 100 * ((0.10 - 0.20) - 0) = 5 > 0, so accuracy is 1 and
    loss = -log sigmoid(5) = log(1 + e^-5) = 0.0067153 < log 2.
    """
    loss, metrics = diffusion_dpo_loss(t(0.10), t(0.20), t(0.15), t(0.15), beta=100)
    assert loss.item() == pytest.approx(0.0067153, abs=1e-6)
    assert loss.item() < math.log(2)
    assert metrics["implicit_accuracy"].item() == 1.0
    assert metrics["margin"].item() == pytest.approx(5.0)


def test_dpo_batch_values_and_tie_counts_half():
    """beta = 10, r_w = r_l = 0.2, e_l = 0.2, e_w = (0.1, 0.3, 0.2).

    inside = -5 * (e_w - e_l) = (0.5, -0.5, 0).
    loss = (log(1 + e^-0.5), log(1 + e^0.5), log 2) = (0.474077, 0.974077, 0.693147).
    Accuracy = (1 + 0 + 0.5) / 3 = 0.5; model MSE of winners = 0.2, of losers = 0.2.
    """
    e_w, e_l, r = t(0.1, 0.3, 0.2), t(0.2, 0.2, 0.2), t(0.2, 0.2, 0.2)
    loss, metrics = diffusion_dpo_loss(e_w, e_l, r, r, beta=10)
    torch.testing.assert_close(loss, t(0.474077, 0.974077, 0.693147), atol=1e-6, rtol=0)
    assert metrics["implicit_accuracy"].item() == pytest.approx(0.5)
    assert metrics["model_mse_w"].item() == pytest.approx(0.2)
    assert metrics["ref_mse_l"].item() == pytest.approx(0.2)


def test_dpo_gradient_pushes_winner_error_down():
    """beta = 4, all errors equal, so inside = 0.

    d loss / d inside = -sigmoid(-0) = -0.5 and d inside / d e_w = -0.5 * beta = -2,
    so d loss / d e_w = 1.0 and d loss / d e_l = -1.0: gradient descent lowers the winner's
    error and raises the loser's.
    """
    e_w, e_l = t(0.3).requires_grad_(), t(0.3).requires_grad_()
    loss, _ = diffusion_dpo_loss(e_w, e_l, t(0.3), t(0.3), beta=4)
    loss.sum().backward()
    assert e_w.grad.item() == pytest.approx(1.0)
    assert e_l.grad.item() == pytest.approx(-1.0)


def test_dpo_official_units_match_the_diffusers_form():
    """With beta = 5000, -logsigmoid(2500 * ((r_w - r_l) - (e_w - e_l))) is the same loss."""
    e_w, e_l, r_w, r_l = t(0.1001), t(0.1003), t(0.1002), t(0.1001)
    loss, _ = diffusion_dpo_loss(e_w, e_l, r_w, r_l, beta=5000)
    expected = -F.logsigmoid(2500 * ((r_w - r_l) - (e_w - e_l)))
    torch.testing.assert_close(loss, expected)


def test_sft_loss_is_winner_error():
    """The SFT baseline is the winner's denoising error itself: (0.1, 0.3) -> mean 0.2."""
    loss, metrics = sft_loss(t(0.1, 0.3))
    torch.testing.assert_close(loss, t(0.1, 0.3))
    assert metrics["model_mse_w"].item() == pytest.approx(0.2)


def test_denoising_error_averages_over_non_batch_dims():
    """Example 0 is off by 1 everywhere (error 1), example 1 by 2 on half its 4 elements:
    (4 + 4 + 0 + 0) / 4 = 2."""
    target = torch.zeros(2, 1, 2, 2)
    prediction = torch.stack([torch.ones(1, 2, 2), torch.tensor([[[2.0, 2.0], [0.0, 0.0]]])])
    torch.testing.assert_close(denoising_error(prediction, target), torch.tensor([1.0, 2.0]))


def test_spo_clamps_ratio_and_stops_its_gradient():
    """logp_w - ref = log 1.05 (inside the [0.9, 1.1] region), logp_l - ref = log 0.8 (clamped
    to 0.9). inside = 10 * (log 1.05 - log 0.9) = 10 * (0.048790 + 0.105361) = 1.541507,
    e^-1.541507 = 0.214058, loss = log(1.214058) = 0.193969, clip fraction = 1 / 2.
    d loss / d logp_w = -sigmoid(-1.541507) * 10 = -(0.214058 / 1.214058) * 10 = -1.763163;
    the clamped loser gets 0.
    """
    logp_w = t(math.log(1.05)).requires_grad_()
    logp_l = t(math.log(0.8)).requires_grad_()
    loss, metrics = spo_step_loss(logp_w, logp_l, t(0.0), t(0.0), beta=10, clip=0.1)
    assert loss.item() == pytest.approx(0.193969, abs=1e-6)
    assert metrics["clip_fraction"].item() == 0.5
    assert metrics["implicit_accuracy"].item() == 1.0
    loss.sum().backward()
    assert logp_w.grad.item() == pytest.approx(-1.763163, abs=1e-6)
    assert logp_l.grad.item() == 0.0


def test_spo_equal_ratios_give_log2():
    """Same log-prob shift for winner and loser: inside = 0, loss = log 2, accuracy 0.5."""
    loss, metrics = spo_step_loss(t(-1.0), t(-2.0), t(-1.02), t(-2.02))
    assert loss.item() == pytest.approx(math.log(2))
    assert metrics["implicit_accuracy"].item() == 0.5


def test_pairwise_preference_loss_values():
    """Scores (2, 0): label 1 -> log(1 + e^-2) = 0.126928; label 0 -> log(1 + e^2) = 2.126928.
    Tie (label 0.5) with scores (1, 0): 0.5 * (log(1 + e^-1) + log(1 + e)) = 0.5 * (0.313262 +
    1.313262) = 0.813262. Accuracy over the two decisive pairs: (1 + 0) / 2 = 0.5.
    """
    loss, metrics = pairwise_preference_loss(t(2.0, 2.0, 1.0), t(0.0, 0.0, 0.0), t(1.0, 0.0, 0.5))
    torch.testing.assert_close(loss, t(0.126928, 2.126928, 0.813262), atol=1e-6, rtol=0)
    assert metrics["accuracy"].item() == pytest.approx(0.5)
    assert metrics["n_decisive"].item() == 2


def test_pairwise_tie_is_fitted_by_equal_scores():
    """Equal scores on a tie: loss = -(0.5 log 0.5 + 0.5 log 0.5) = log 2, the minimum; the
    gradient on each score is softmax - target = 0.5 - 0.5 = 0. Only ties: accuracy is NaN."""
    score_0, score_1 = t(0.7).requires_grad_(), t(0.7).requires_grad_()
    loss, metrics = pairwise_preference_loss(score_0, score_1, t(0.5))
    assert loss.item() == pytest.approx(math.log(2))
    loss.sum().backward()
    assert score_0.grad.item() == pytest.approx(0.0)
    assert math.isnan(metrics["accuracy"].item())
