"""Preference losses as pure functions: tensors in, per-example losses and detached metrics out.

Recipes reduce the per-example losses themselves (mean over the batch), so gradient
accumulation and distributed averaging stay in one place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def denoising_error(prediction: Tensor, target: Tensor) -> Tensor:
    """Per-example squared error of a denoiser, averaged over every non-batch dimension.

    Args:
        prediction: Model output, shape (B, C, H, W).
        target: Noise (epsilon prediction) or velocity (v-prediction), shape (B, C, H, W).

    Returns:
        Shape (B,): mean over C, H, W of (prediction - target)^2, computed in float32.
    """
    return (prediction.float() - target.float()).pow(2).mean(dim=tuple(range(1, prediction.ndim)))


def _accuracy(inside: Tensor) -> Tensor:
    """Share of positive entries, counting exact zeros as half right."""
    return ((inside > 0).float() + 0.5 * (inside == 0).float()).mean()


def diffusion_dpo_loss(
    model_err_w: Tensor, model_err_l: Tensor, ref_err_w: Tensor, ref_err_l: Tensor, beta: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Diffusion-DPO loss (Wallace et al., CVPR 2024) in the official code's units.

    ``inside = -0.5 * beta * ((e_w - e_l) - (r_w - r_l))`` and ``loss = -logsigmoid(inside)``:
    the loss falls when the trained model lowers the winner's denoising error more than the
    loser's, relative to the frozen reference. beta = 5000 here equals the 2500 of diffusers'
    SD1.5 example, which folds the 0.5 in.

    Args:
        model_err_w: Trained model's denoising error on the winners, shape (B,).
        model_err_l: Trained model's denoising error on the losers, shape (B,).
        ref_err_w: Reference model's error on the winners, shape (B,), no gradient needed.
        ref_err_l: Reference model's error on the losers, shape (B,).
        beta: KL-regularisation strength in the official units (paper: 2000..5000).

    Returns:
        Per-example loss of shape (B,) and detached scalar metrics: ``implicit_accuracy``
        (share of pairs with inside > 0, ties at 0 count 0.5), ``margin`` (mean inside),
        ``model_mse_w``, ``model_mse_l``, ``ref_mse_w``, ``ref_mse_l``.
    """
    inside = -0.5 * beta * ((model_err_w - model_err_l) - (ref_err_w - ref_err_l))
    loss = -F.logsigmoid(inside)
    metrics = {
        "implicit_accuracy": _accuracy(inside.detach()),
        "margin": inside.detach().mean(),
        "model_mse_w": model_err_w.detach().mean(),
        "model_mse_l": model_err_l.detach().mean(),
        "ref_mse_w": ref_err_w.detach().mean(),
        "ref_mse_l": ref_err_l.detach().mean(),
    }
    return loss, metrics


def sft_loss(model_err_w: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Supervised fine-tuning baseline: plain denoising loss on the winners, no reference.

    Args:
        model_err_w: Trained model's denoising error on the winners, shape (B,).

    Returns:
        Per-example loss of shape (B,) (the error itself) and the detached metric
        ``model_mse_w``.
    """
    return model_err_w, {"model_mse_w": model_err_w.detach().mean()}


def spo_step_loss(
    logp_w: Tensor,
    logp_l: Tensor,
    ref_logp_w: Tensor,
    ref_logp_l: Tensor,
    beta: float = 10.0,
    clip: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Step-level preference loss of SPO (Liang et al. 2024) on one denoising transition.

    ``ratio = clamp(exp(logp - ref_logp), 1 - clip, 1 + clip)`` for winner and loser, then
    ``loss = -logsigmoid(beta * (log ratio_w - log ratio_l))``. The clamp also stops the
    gradient once a ratio leaves the trust region, as in the official code.

    Args:
        logp_w: Trained model's log-density of the winning x_{t-1} given x_t, averaged over
            latent elements, shape (B,).
        logp_l: Same for the losing candidate, shape (B,).
        ref_logp_w: Reference model's log-density of the winner, shape (B,).
        ref_logp_l: Reference model's log-density of the loser, shape (B,).
        beta: Inverse temperature (official: 10).
        clip: Half-width of the ratio's trust region (official: 0.1).

    Returns:
        Per-example loss of shape (B,) and detached scalar metrics: ``implicit_accuracy``
        (share with log ratio_w > log ratio_l, ties count 0.5), ``margin`` (mean of
        beta * (log ratio_w - log ratio_l)) and ``clip_fraction`` (share of ratios clamped).
    """
    raw_w = torch.exp(logp_w - ref_logp_w)
    raw_l = torch.exp(logp_l - ref_logp_l)
    ratio_w = raw_w.clamp(1.0 - clip, 1.0 + clip)
    ratio_l = raw_l.clamp(1.0 - clip, 1.0 + clip)
    inside = beta * (torch.log(ratio_w) - torch.log(ratio_l))
    loss = -F.logsigmoid(inside)
    clipped = torch.cat([raw_w != ratio_w, raw_l != ratio_l]).float()
    metrics = {
        "implicit_accuracy": _accuracy(inside.detach()),
        "margin": inside.detach().mean(),
        "clip_fraction": clipped.mean(),
    }
    return loss, metrics


def pairwise_preference_loss(
    score_0: Tensor, score_1: Tensor, label_0: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """Two-way cross-entropy over a pair's scores with soft labels (PickScore / SPM training).

    ``loss = -(label_0 * log softmax_0 + (1 - label_0) * log softmax_1)`` where the softmax runs
    over (score_0, score_1). A tie (label 0.5) is fitted by equal scores.

    Args:
        score_0: Scores of the first images (e.g. logit_scale * cosine), shape (B,).
        score_1: Scores of the second images, shape (B,).
        label_0: Preference for the first image, 1, 0 or 0.5 for a tie, shape (B,).

    Returns:
        Per-example loss of shape (B,) and detached scalar metrics: ``accuracy`` over the
        non-tie pairs (equal scores count 0.5; NaN when every pair is a tie) and
        ``n_decisive`` (how many non-tie pairs the accuracy covers).
    """
    log_probs = torch.stack([score_0, score_1], dim=-1).log_softmax(dim=-1)
    target = torch.stack([label_0, 1.0 - label_0], dim=-1).to(log_probs.dtype)
    loss = -(target * log_probs).sum(dim=-1)
    decisive = label_0 != 0.5
    signed = (score_0 - score_1).detach() * torch.where(label_0 > 0.5, 1.0, -1.0)
    metrics = {
        "accuracy": _accuracy(signed[decisive]),
        "n_decisive": decisive.sum(),
    }
    return loss, metrics
