"""``scorer=reward_model``: a reward model trained by ``method=reward_model`` scores completions
(:class:`alignkit.reward_models.RewardModelScorer`: encoded as the reward model was trained)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from alignkit.api import RewardModelScorer, RunContext, resolve_reward_folder


@dataclass
class RewardModelScorerConfig:
    """``scorer=reward_model`` options.

    Attributes:
        name: ``reward_model``.
        path: a reward-model run folder (its ``final/`` is used), a checkpoint of one (LoRA ones
            too), or the saved folder itself.
        attribute: which head output is the reward (default: the first).
        all_attributes: return every head output, (B, A) in the head's attribute order, instead of one
            column (B,) (an attribute-prediction model, e.g. SteerLM annotation).
        batch_size: sequences scored per forward.
        max_length: cap on prompt + completion tokens (prompts keep their end); null: the reward
            model's saved ``data.max_length`` (1024 for a folder without saved settings).
        system_prompt: system message put before every prompt; null: the saved one ("" for none).
        chat_template: encode with the chat template (true) or as plain text (false); null: as saved.
    """

    name: str = "reward_model"
    path: Optional[str] = None
    attribute: Optional[str] = None
    all_attributes: bool = False
    batch_size: int = 8
    max_length: Optional[int] = None
    system_prompt: Optional[str] = None
    chat_template: Optional[bool] = None


def build(ctx: RunContext, cfg: Any) -> RewardModelScorer:
    """A trained reward model (``scorer.path=<run folder>``) scores each completion."""
    return RewardModelScorer(resolve_reward_folder(cfg.path), device=ctx.device, attribute=cfg.attribute,
                             batch_size=cfg.batch_size, max_length=cfg.get("max_length"),
                             all_attributes=bool(cfg.get("all_attributes", False)),
                             system_prompt=cfg.get("system_prompt"), chat_template=cfg.get("chat_template"),
                             source="scorer", log=ctx.log)
