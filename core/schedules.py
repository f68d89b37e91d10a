"""Learning-rate schedules as ``LambdaLR`` multipliers: linear warm-up, then constant / linear / cosine."""

from __future__ import annotations

import math
from typing import Any

import torch

from .errors import ConfigError

_SHAPES = {
    "constant": lambda progress: 1.0,
    "linear": lambda progress: max(0.0, 1.0 - progress),
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))),
}


def build_scheduler(cfg: Any, optimizer: torch.optim.Optimizer, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``cfg``: ``{name: constant|linear|cosine, warmup_steps: int}``."""
    name = cfg.get("name", "constant")
    if name not in _SHAPES:
        raise ConfigError(f"trainer.scheduler.name={name!r}; expected one of {sorted(_SHAPES)}")
    shape, warmup = _SHAPES[name], int(cfg.get("warmup_steps", 0))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return shape((step - warmup) / max(1, max_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
