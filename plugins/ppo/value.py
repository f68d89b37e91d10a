"""Value functions for PPO: a linear head on the policy's own trunk, or a separate critic LM.

Values are read at every position that predicts a completion token, aligned with the log-probs:
``V[:, t]`` is the value of the state after tokens ≤ t, before token t+1 is sampled.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import torch

from alignkit.api import TokenBatch, hidden_states, token_stats, token_stats_with_hidden, unwrap_lm


class ValueHead(torch.nn.Module):
    """V(h) = w·h + b on a final hidden state; starts at 0 so the first advantages are the returns."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1).float()  # (B, T)


class PolicyOutput(NamedTuple):
    """Per-position outputs (B, T−1) of one policy (+ critic) pass."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None
    values: torch.Tensor


class SharedCritic(torch.nn.Module):
    """Value head on the policy trunk: one forward gives log-probs and values.

    This is :func:`alignkit.logprobs.token_stats_with_hidden` (trunk hidden states → the model's output
    head in the fused log-prob kernel, no logits) with the hidden states kept for the head.
    """

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.head = ValueHead(unwrap_lm(policy).config.hidden_size)

    def forward(self, policy: Any, batch: TokenBatch, *, temperature: float, entropy: bool) -> PolicyOutput:
        stats, hidden = token_stats_with_hidden(policy, batch.input_ids, batch.attention_mask, batch.labels,
                                                temperature=temperature, entropy=entropy,
                                                prefix_groups=batch.prefix_groups())  # hidden (B, T, d)
        return PolicyOutput(stats.logprobs, stats.entropy, self.head(hidden[:, :-1]))  # (B, T-1) each


class SeparateCritic(torch.nn.Module):
    """A critic LM (a copy of the initial policy's weights) with its own value head."""

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.model = copy.deepcopy(unwrap_lm(policy))
        self.model.train()
        self.head = ValueHead(self.model.config.hidden_size)

    def forward(self, policy: Any, batch: TokenBatch, *, temperature: float, entropy: bool) -> PolicyOutput:
        groups = batch.prefix_groups()
        stats = token_stats(policy, batch.input_ids, batch.attention_mask, batch.labels,
                            temperature=temperature, entropy=entropy, prefix_groups=groups)
        hidden = hidden_states(self.model, batch.input_ids, batch.attention_mask, groups)[:, :-1]  # (B, T-1, d)
        return PolicyOutput(stats.logprobs, stats.entropy, self.head(hidden))  # (B, T-1) each


CRITICS = {"shared": SharedCritic, "separate": SeparateCritic}
