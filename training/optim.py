"""The learning-rate schedule the recipes share."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> LambdaLR:
    """Linear warm-up from 0 to the optimizer's learning rate over ``warmup_steps`` optimizer steps,
    then constant (the official Diffusion-DPO schedule); no warm-up when ``warmup_steps`` is 0."""
    return LambdaLR(optimizer, lambda done: min(1.0, (done + 1) / warmup_steps) if warmup_steps else 1.0)
