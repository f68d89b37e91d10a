"""``scorer=reward_model``: a reward model trained by ``method=reward_model`` scores completions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from alignkit.context import RunContext
from alignkit.errors import ConfigError, ModelError
from alignkit.tokenize import Encoder, pad

from .head import META_FILE, RewardHead, score


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
        max_length: cap on prompt + completion tokens (prompts keep their end).
    """

    name: str = "reward_model"
    path: Optional[str] = None
    attribute: Optional[str] = None
    all_attributes: bool = False
    batch_size: int = 8
    max_length: int = 1024


def resolve_reward_folder(path: str | None) -> Path:
    if not path:
        raise ConfigError("scorer.path is not set; pass scorer.path=<reward-model run folder>")
    from alignkit.models import find_model_folder

    try:  # a run folder (its final/, or its newest checkpoint), a checkpoint, its model/, a saved folder
        folder: Path | None = find_model_folder(path, "scorer.path")
    except ModelError:
        folder = None
    if folder is not None and (folder / META_FILE).exists():
        return folder
    raise ModelError(f"scorer.path={path}: no {META_FILE} in it, in its final/ or in a checkpoint's model/; "
                     "train one with method=reward_model")


class RewardModelScorer:
    """Loads ``<run>/final`` (LM trunk + reward head) and scores (prompt, completion) pairs."""

    def __init__(self, folder: Path, *, device: torch.device, attribute: str | None = None, batch_size: int = 8,
                 max_length: int = 1024, all_attributes: bool = False) -> None:
        from omegaconf import OmegaConf

        from alignkit.models import ModelConfig, load_model

        # load_model: a full trunk, or a LoRA checkpoint's base with its adapter merged in.
        model, self.tokenizer = load_model(OmegaConf.merge(OmegaConf.structured(ModelConfig), {"path": str(folder)}))
        self.model = model.to(device).eval()
        self.model.requires_grad_(False)
        self.head = RewardHead.load(folder, self.model.config.hidden_size).to(device).eval()
        self.column = 0 if attribute is None else self._column(attribute)
        self.all_attributes = all_attributes
        self.encoder = Encoder(self.tokenizer, max_length=max_length, max_prompt_length=max_length * 3 // 4,
                               use_chat_template=bool(self.tokenizer.chat_template))
        self.batch_size, self.device = batch_size, device

    def _column(self, attribute: str) -> int:
        if attribute not in self.head.attributes:
            raise ConfigError(f"scorer.attribute={attribute!r}; this reward model has {self.head.attributes}")
        return self.head.attributes.index(attribute)

    @property
    def attributes(self) -> list[str]:
        """Names of the head's outputs (the columns of :meth:`score_attributes`)."""
        return list(self.head.attributes)

    def score_texts(self, prompts: list[list[dict]], completions: list[str]) -> torch.Tensor:
        """(B,) rewards for chat-message prompts and their completion texts."""
        return self.score_attributes(prompts, completions)[:, self.column]  # (B,)

    @torch.no_grad()
    def score_attributes(self, prompts: list[list[dict]], completions: list[str]) -> torch.Tensor:
        """(B, A) scores of every head output for chat-message prompts and their completion texts."""
        rows = [self.encoder.encode(p, [{"role": "assistant", "content": c}])["input_ids"]
                for p, c in zip(prompts, completions)]
        out = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            ids = torch.tensor(pad(chunk, self.tokenizer.pad_token_id), device=self.device)  # (b, T)
            mask = torch.tensor(pad([[1] * len(r) for r in chunk], 0), device=self.device)  # (b, T)
            out.append(score(self.model, self.head, ids, mask))  # (b, A)
        return torch.cat(out).float().cpu()  # (B, A)

    def __call__(self, batch: dict) -> torch.Tensor:
        if self.all_attributes:
            return self.score_attributes(batch["prompts"], batch["completions"])  # (B, A)
        return self.score_texts(batch["prompts"], batch["completions"])  # (B,)


def build(ctx: RunContext, cfg: Any) -> RewardModelScorer:
    """A trained reward model (``scorer.path=<run folder>``) scores each completion."""
    return RewardModelScorer(resolve_reward_folder(cfg.path), device=ctx.device, attribute=cfg.attribute,
                             batch_size=cfg.batch_size, max_length=cfg.max_length,
                             all_attributes=bool(cfg.get("all_attributes", False)))
