"""The learning-rate schedule and the weight average the recipes share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from diffusers.training_utils import EMAModel
from torch.optim.lr_scheduler import LambdaLR


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> LambdaLR:
    """Linear warm-up from 0 to the optimizer's learning rate over ``warmup_steps`` optimizer steps,
    then constant (the official Diffusion-DPO schedule); no warm-up when ``warmup_steps`` is 0."""
    return LambdaLR(optimizer, lambda done: min(1.0, (done + 1) / warmup_steps) if warmup_steps else 1.0)


@contextmanager
def averaged(average: EMAModel | None, params: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """Inside the block `params` hold the moving average (unchanged when `average` is None); after it, their own values."""
    if average is None:
        yield
        return
    average.store(params)
    average.copy_to(params)
    try:
        yield
    finally:
        average.restore(params)
