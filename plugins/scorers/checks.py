"""What every scorer promises: one finite float per completion, or an error naming the scorer."""

from __future__ import annotations

from typing import Any

import torch

from alignkit.errors import TrainingError


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


def prompt_texts(batch: dict) -> list[str]:
    """The prompt of every row as text (the rollout's ``prompt_text``, else the last message)."""
    if "prompt_text" in batch:
        return list(batch["prompt_text"])
    return [p[-1]["content"] if isinstance(p, list) else str(p) for p in batch["prompts"]]
