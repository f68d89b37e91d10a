"""What every scorer promises: one finite float per completion (or A per completion), or an error naming it."""

from __future__ import annotations

from typing import Any

import torch

from .errors import TrainingError


def checked_rewards(rewards: Any, batch: Any, scorer_name: str) -> torch.Tensor:
    """The scorer's output as float32 (B,) or (B, A); TrainingError for a wrong length or a non-finite value."""
    if not isinstance(rewards, torch.Tensor):
        rewards = torch.as_tensor(rewards, dtype=torch.float32)
    expected = batch.num_rows
    if rewards.shape[0] != expected:
        raise TrainingError(f"scorer '{scorer_name}' returned {rewards.shape[0]} rewards for {expected} completions")
    if not torch.isfinite(rewards).all():
        raise TrainingError(f"scorer '{scorer_name}' returned a non-finite reward (NaN or inf)")
    return rewards.float()


def as_rewards(values: Any, n: int, who: str) -> torch.Tensor:
    """``values`` as a (n,) float32 tensor, or a one-line ``TrainingError`` naming ``who``.

    Args:
        values: what the scorer returned (list of numbers or tensor).
        n: number of completions scored.
        who: the scorer, as the user configured it (e.g. ``scorer 'function' (fn=mod:f)``).
    """
    try:
        rewards = torch.as_tensor(values, dtype=torch.float32)  # (n,)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TrainingError(f"{who} returned {type(values).__name__}, not a list of numbers: {exc}") from None
    if rewards.dim() == 2 and rewards.shape[1] == 1:
        rewards = rewards[:, 0]
    if rewards.dim() != 1 or rewards.shape[0] != n:
        raise TrainingError(f"{who} returned {tuple(rewards.shape)} rewards for {n} completions; expected one float "
                            "per completion")
    bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
    if bad:
        raise TrainingError(f"{who} returned a non-finite reward ({float(rewards[bad[0]])}) for completion {bad[0]} "
                            f"({len(bad)} of {n} non-finite)")
    return rewards
