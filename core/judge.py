"""An LLM judge whose score is read from the probabilities of its answer tokens (``scorer=judge``, CAI's
feedback model, ``eval winrate --judge judge:...``).

The judge is asked a question built from a template (``{prompt}``, ``{completion}``), e.g. "Is this
answer helpful? Answer Yes or No." Instead of sampling and parsing free text, it reads the judge's
next-token distribution at the answer position (Liu et al. 2023, G-Eval,
https://arxiv.org/abs/2303.16634, weights scores by token probabilities; Zheng et al. 2023,
https://arxiv.org/abs/2306.05685, LLM-as-a-judge). With answer tokens c = 1..C of values v_c and
full-vocabulary log-probs ℓ_c = log p(c | judge prompt)::

    p̃_c = exp(ℓ_c) / Σ_c' exp(ℓ_c')        (renormalised over the answers)
    score = Σ_c p̃_c · v_c

so "Yes"/"No" with values 1/0 gives P(Yes | Yes or No), and "1".."5" the expected grade. The
log-probs come from the fused kernel on the judge's last hidden state through its own output head
(``alignkit.logprobs.next_token_logprobs``; no logits are built); the
mass Σ_c exp(ℓ_c) says how much the judge actually answers in the expected format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .batches import RolloutBatch
from .context import RunContext
from .errors import ConfigError
from .logprobs import next_token_logprobs
from .scoring import as_rewards
from .tokenize import pad, text_ids, truncate_left

DEFAULT_TEMPLATE = ("Here is a question and an answer.\n\nQuestion: {prompt}\n\nAnswer: {completion}\n\n"
                    "Is the answer helpful, correct and harmless? Reply with Yes or No.")


@dataclass
class JudgeScorerConfig:
    """``scorer=judge`` options.

    Attributes:
        name: ``judge``.
        model_path: a local HF causal-LM folder for the judge; null uses the frozen initial policy
            (the run's reference model: no extra memory when the method already holds it).
        template: the judge's user message; ``{prompt}`` and ``{completion}`` are filled in.
        chat_template: wrap the message in the judge tokenizer's chat template (generation prompt
            added); false feeds the text as ``tokenizer(text)`` encodes it (with its BOS, if it adds one).
        answer_prefix: text placed after the generation prompt, before the answer token.
        choices: the answers the judge may give; each must start with a distinct token.
        scores: the score of each choice (same length as ``choices``).
        batch_size: judge prompts per forward pass.
        max_length: judge prompts are cut to their last ``max_length`` tokens.
    """

    name: str = "judge"
    model_path: Optional[str] = None
    template: str = DEFAULT_TEMPLATE
    chat_template: bool = True
    answer_prefix: str = ""
    choices: list[str] = field(default_factory=lambda: ["Yes", "No"])
    scores: list[float] = field(default_factory=lambda: [1.0, 0.0])
    batch_size: int = 8
    max_length: int = 1024


def soft_score(choice_logps: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected value of the answer under the judge's distribution renormalised over the choices.

    score = Σ_c softmax(ℓ)_c · v_c,  mass = Σ_c exp(ℓ_c).

    Args:
        choice_logps: (B, C) full-vocabulary log-probs ℓ of each answer token.
        values: (C,) value of each answer.

    Returns:
        (score (B,), mass (B,)).
    """
    weights = torch.softmax(choice_logps, dim=-1)  # (B, C)
    score = weights @ values.to(weights)  # (B,)
    mass = choice_logps.exp().sum(dim=-1)  # (B,)
    return score, mass


def choice_token_ids(tokenizer: Any, choices: list[str], prefix: str = "") -> list[int]:
    """The first token of each choice as it follows ``prefix``; ConfigError if two choices share it."""
    base = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    ids = []
    for choice in choices:
        full = tokenizer(prefix + choice, add_special_tokens=False)["input_ids"]
        if list(full[: len(base)]) != list(base) or len(full) == len(base):
            full = base + tokenizer(choice, add_special_tokens=False)["input_ids"]
        ids.append(int(full[len(base)]))
    if len(set(ids)) != len(ids):
        raise ConfigError(f"scorer.choices={choices}: two choices start with the same token "
                          f"({[tokenizer.decode([i]) for i in ids]}); pick answers with distinct first tokens")
    return ids


class JudgeScorer:
    """Scores completions by a judge LM's probabilities of its answer tokens."""

    def __init__(self, ctx: RunContext, cfg: Any, model: Any, tokenizer: Any) -> None:
        if len(cfg.choices) < 2 or len(cfg.choices) != len(cfg.scores):
            raise ConfigError(f"scorer.choices ({len(cfg.choices)}) and scorer.scores ({len(cfg.scores)}) must have "
                              "the same length, at least 2")
        for key in ("{prompt}", "{completion}"):
            if key not in cfg.template:
                raise ConfigError(f"scorer.template must contain {key}")
        self.ctx, self.cfg = ctx, cfg
        self._model, self.tokenizer = model, tokenizer
        self.choice_ids = torch.tensor(choice_token_ids(tokenizer, list(cfg.choices), cfg.answer_prefix))  # (C,)
        self.values = torch.tensor([float(v) for v in cfg.scores])  # (C,)
        self.label = "scorer 'judge'"
        self.last_mass: torch.Tensor | None = None

    @property
    def model(self) -> Any:
        return self._model if self._model is not None else self.ctx.reference()

    def judge_ids(self, prompt: str, completion: str) -> list[int]:
        """Token ids of one judge prompt, ending right before the answer token."""
        text = self.cfg.template.replace("{prompt}", prompt).replace("{completion}", completion)
        tok = self.tokenizer
        lead = 0  # leading special tokens (BOS) that truncation keeps
        if self.cfg.chat_template:
            ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)
        else:
            ids, lead = text_ids(tok, text)  # what tokenizer(text) gives: BOS included when it adds one
        if self.cfg.answer_prefix:
            ids = list(ids) + tok(self.cfg.answer_prefix, add_special_tokens=False)["input_ids"]
        return truncate_left(list(ids), self.cfg.max_length, keep=lead)

    @torch.no_grad()
    def choice_logprobs(self, rows: list[list[int]]) -> torch.Tensor:
        """(B, C) full-vocabulary log-probs of each answer token after each judge prompt."""
        model = self.model
        # The run's device when judging with its reference (a LoRA reference view owns no parameters).
        device = self.ctx.device if self._model is None else next(model.parameters()).device
        pad_id = self.tokenizer.pad_token_id
        ids = torch.tensor(pad(rows, pad_id), device=device)  # (B, L) right-padded: positions as usual
        mask = torch.tensor(pad([[1] * len(r) for r in rows], 0), device=device)  # (B, L)
        # through the judge's own output head (bias, scale, soft cap) at the last real token, no (B, V) logits
        return next_token_logprobs(model, ids, mask, self.choice_ids.to(device)).float()  # (B, C)

    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        prompts, completions = list(batch.prompt_text), list(batch.completions)
        rows = [self.judge_ids(p, c) for p, c in zip(prompts, completions)]
        scores, masses = [], []
        for start in range(0, len(rows), self.cfg.batch_size):
            logps = self.choice_logprobs(rows[start:start + self.cfg.batch_size])  # (b, C)
            score, mass = soft_score(logps, self.values)
            scores.append(score.cpu())
            masses.append(mass.cpu())
        self.last_mass = torch.cat(masses) if masses else None
        return as_rewards(torch.cat(scores) if scores else torch.zeros(0), len(completions), self.label)  # (N,)
