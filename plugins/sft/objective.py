"""SFT: maximise the likelihood of the completion tokens (prompt masked), with the chat template."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from alignkit.context import RunContext
from alignkit.interfaces import LossOutput
from alignkit.logprobs import sequence_logprobs

from .losses import nll


@dataclass
class SFTConfig:
    """``method=sft`` options.

    Attributes:
        name: ``sft``.
    """

    name: str = "sft"


class SFTObjective:
    """Token-mean NLL on completion tokens; held-out NLL and perplexity."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def weight(self, batch: dict) -> float:
        # Micro-batches weigh by target tokens so accumulation equals one big batch.
        return float((batch["labels"][:, 1:] != -100).sum())

    def __call__(self, batch: dict) -> LossOutput:
        stats = sequence_logprobs(self.ctx.policy, batch)
        loss = nll(stats.sum, stats.count)  # ()
        return LossOutput(loss, {"tokens": float(stats.count.sum())})

    def evaluate(self, batch: dict) -> dict[str, torch.Tensor]:
        stats = sequence_logprobs(self.ctx.policy, batch)
        return {"nll_sum": -stats.sum, "tokens": stats.count.float()}  # (B,) each

    def summarize(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        tokens = float(values["tokens"].sum())
        mean_nll = float(values["nll_sum"].sum()) / max(tokens, 1.0)
        return {"nll": mean_nll, "ppl": math.exp(min(mean_nll, 50.0)), "examples": float(len(values["tokens"])),
                "tokens": tokens}


def build(ctx: RunContext) -> SFTObjective:
    """Supervised fine-tuning: NLL of completion tokens, prompt masked."""
    return SFTObjective(ctx)
