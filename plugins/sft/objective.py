"""SFT: maximise the likelihood of the completion tokens (prompt masked), with the chat template."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from alignkit.api import LossOutput, RunContext, Sum, TokenBatch, nll, sequence_logprobs


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

    def weight(self, batch: TokenBatch) -> float:
        """Units: target (completion) tokens — the loss is a token mean."""
        return float(batch.target_tokens())

    def __call__(self, batch: TokenBatch) -> LossOutput:
        stats = sequence_logprobs(self.ctx.policy, batch)
        loss = nll(stats.sum, stats.count)  # ()
        return LossOutput(loss, {"tokens": Sum(stats.count.sum())})  # target tokens of the step

    def evaluate(self, batch: TokenBatch) -> dict[str, torch.Tensor]:
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
