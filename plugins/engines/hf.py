"""``rollout.engine=hf``: Hugging Face ``generate`` with the policy being trained (the exact reference engine).

Samples with the policy object itself (unwrapped, eval mode, a sharded policy gathered), so there are no
weights to sync; each sampled token's log-prob is recorded from the processed scores it was drawn from
(:class:`alignkit.generation.SampledLogprobs`: temperature, top-k, top-p applied in Hugging Face's own
order, the draws unchanged). Sampling uses the global generator, which the rollout swaps for its own
saved stream: per-request seeds are not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from alignkit.api import (
    Completion,
    EngineDemand,
    RunContext,
    SamplingSettings,
    end_token_ids,
    policy_logprobs,
    sample,
)
from alignkit.api import generate_from_policy as generate


@dataclass
class HFEngineConfig:
    """``rollout.engine=hf`` takes no options."""


class HFEngine:
    """Samples with the policy's own ``generate``; :meth:`sync` has nothing to do."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.end_ids = end_token_ids(ctx.tokenizer, ctx.policy)
        self.pad_id = ctx.tokenizer.pad_token_id

    def generate(self, policy: Any, prompts: Sequence[Sequence[int]], settings: SamplingSettings,
                 seeds: Sequence[int]) -> list[Completion]:
        return sample(policy, prompts, settings, end_ids=self.end_ids, pad_id=self.pad_id, tokenizer=self.ctx.tokenizer,
                      device=self.ctx.device, generate=lambda **kwargs: generate(policy, self.ctx.accelerator, **kwargs),
                      logprobs=True)

    def sync(self, policy: Any) -> None:
        """Nothing to copy: the engine is the policy."""

    def prompt_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        return policy_logprobs(self.ctx.policy, sequences, self.pad_id)

    def close(self) -> None:
        """Nothing held."""


def build(ctx: RunContext, options: Any, demand: EngineDemand) -> HFEngine:
    """Hugging Face generate with the policy itself (``demand`` unused: its cache grows per call)."""
    return HFEngine(ctx)
