"""Batched chat generation for CAI's data stages, built on ``rollout=generate``'s helpers.

Each call renders message lists with the tokenizer's chat template, left-pads them, runs Hugging
Face ``generate`` with the KV cache under a private random stream seeded per call
(:class:`alignkit.plugins.generate.rollout.SamplingRNG`), and cuts every row where it ended
(:func:`alignkit.plugins.generate.layout.completion_end`). The global RNG is left untouched, so
generating data never shifts the training run's randomness.
"""

from __future__ import annotations

from typing import Any

import torch

from alignkit.plugins.generate.layout import completion_end
from alignkit.plugins.generate.rollout import SamplingRNG

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
        self.eos_ids = {tokenizer.eos_token_id}

    def prompt_ids(self, messages: Messages) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)
        return list(ids)[-self.max_prompt_tokens:]

    def _config(self) -> Any:
        from transformers import GenerationConfig

        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "pad_token_id": self.pad_id,
                                   "eos_token_id": sorted(self.eos_ids), "use_cache": True}
        if self.temperature > 0:
            options.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0)
        else:
            options.update(do_sample=False)
        return GenerationConfig(**options)

    @torch.no_grad()
    def _generate(self, rows: list[list[int]]) -> list[str]:
        width = max(len(r) for r in rows)
        device = next(self.model.parameters()).device
        ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows], device=device)  # (N, P)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)  # (N, P)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=self._config())  # (N, P+new)
        finally:
            self.model.train(was_training)
        texts = []
        for tokens in out[:, width:].tolist():
            length, _ = completion_end(tokens, self.eos_ids, (), self.tokenizer)
            texts.append(self.tokenizer.decode(tokens[:length], skip_special_tokens=True).strip())
        return texts

    def __call__(self, conversations: list[Messages], seed: int) -> list[str]:
        """One answer per conversation, sampled under a private stream seeded with ``seed``."""
        if not conversations:
            return []
        rows = [self.prompt_ids(c) for c in conversations]
        device = next(self.model.parameters()).device
        return SamplingRNG.once(seed, device, lambda: self._generate(rows))
