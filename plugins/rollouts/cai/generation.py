"""Batched chat generation for CAI's data stages, built on :mod:`alignkit.generation`.

Each call renders message lists with the tokenizer's chat template and samples with
:func:`alignkit.generation.sample` (left-padded batch, KV cache, only the configured temperature /
top-p: nothing from the model's ``generation_config.json``) under a private random stream seeded per
call (:func:`alignkit.generation.private_rng`); every row is cut at its first end-of-turn id
(:func:`alignkit.generation.end_token_ids`). The global RNG is left untouched, so generating data
never shifts the training run's randomness.
"""

from __future__ import annotations

from typing import Any

import torch

from alignkit.api import SamplingSettings, end_token_ids, private_rng, sample

from .prompts import Messages


class ChatGenerator:
    """Answers message lists with ``model``; temperature 0 decodes greedily.

    Args:
        model: a Hugging Face causal LM.
        tokenizer: its tokenizer (with a chat template).
        max_new_tokens: cap on each answer.
        temperature: sampling temperature; 0 = greedy.
        top_p: nucleus sampling (1 = off).
        max_prompt_tokens: prompts are cut to their last ``max_prompt_tokens`` tokens.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_new_tokens: int = 96, temperature: float = 0.0,
                 top_p: float = 1.0, max_prompt_tokens: int = 768) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.max_prompt_tokens = max_prompt_tokens
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.end_ids = end_token_ids(tokenizer, model)

    def prompt_ids(self, messages: Messages) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)
        return list(ids)[-self.max_prompt_tokens:]

    def settings(self) -> SamplingSettings:
        """Greedy at temperature 0, else temperature / top-p sampling; nothing else."""
        return SamplingSettings(max_new_tokens=self.max_new_tokens, greedy=self.temperature <= 0,
                                temperature=self.temperature if self.temperature > 0 else 1.0, top_p=self.top_p)

    @torch.no_grad()
    def _generate(self, rows: list[list[int]]) -> list[str]:
        cut = sample(self.model, rows, self.settings(), end_ids=self.end_ids, pad_id=self.pad_id,
                     tokenizer=self.tokenizer)
        return [c.text.strip() for c in cut]

    def __call__(self, conversations: list[Messages], seed: int) -> list[str]:
        """One answer per conversation, sampled under a private stream seeded with ``seed``."""
        if not conversations:
            return []
        rows = [self.prompt_ids(c) for c in conversations]
        with private_rng(seed, next(self.model.parameters()).device):
            return self._generate(rows)
