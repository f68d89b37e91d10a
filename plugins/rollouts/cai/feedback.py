"""AI feedback: which of two answers is better, as a soft label read from token probabilities.

The feedback model sees :func:`alignkit.plugins.rollouts.cai.prompts.feedback_text` (a conversation, one
preference principle, answers (A) and (B)) through its chat template, followed by the answer prefix
``The better answer is (``. Its next-token log-probs ℓ_A, ℓ_B of ``A`` and ``B`` are read with the
``scorer=judge`` machinery (fused kernel on the last hidden state, no text parsing), and::

    p_k(A) = exp ℓ_A / (exp ℓ_A + exp ℓ_B)                    (normalised over the two answers)

Because the prefix ends in ``(``, this equals the normalised probability of the full answers
``(A)`` / ``(B)``: the shared ``(`` cancels. Bai et al. 2022 (https://arxiv.org/abs/2212.08073,
section 4) ensemble such labels over principles; with K sampled principles and, optionally, both
orders (to cancel the judge's position bias)::

    p(first better) = 1/K Σ_k p_k(A | first shown as A)                       (swap off)
    p(first better) = 1/K Σ_k ½ [p_k(A | first as A) + 1 − p_k(A | first as B)]  (swap on)
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import OmegaConf

from alignkit.api import JudgeScorer, JudgeScorerConfig, soft_score

from .constitution import Constitution
from .prompts import ANSWER_PREFIX, FEEDBACK_TEMPLATE, Messages, feedback_text

AB_VALUES = torch.tensor([1.0, 0.0])  # value of answer A, answer B: the soft score is P(A)


def soft_label(choice_logps: torch.Tensor) -> torch.Tensor:
    """P(A) normalised over the two answers: exp ℓ_A / (exp ℓ_A + exp ℓ_B).

    Args:
        choice_logps: (B, 2) full-vocabulary log-probs of the tokens ``A`` and ``B``.

    Returns:
        (B,) probabilities that answer A is the better one.
    """
    return soft_score(choice_logps, AB_VALUES)[0]  # (B,)


class FeedbackModel:
    """Labels answer pairs under sampled preference principles with a (frozen) judge LM."""

    def __init__(self, model: Any, tokenizer: Any, *, template: str = FEEDBACK_TEMPLATE,
                 answer_prefix: str = ANSWER_PREFIX, batch_size: int = 8, max_length: int = 1024) -> None:
        for key in ("{conversation}", "{principle}", "{response_a}", "{response_b}"):
            if key not in template:
                from alignkit.api import ConfigError

                raise ConfigError(f"feedback_template must contain {key}")
        self.template = template
        cfg = OmegaConf.merge(OmegaConf.structured(JudgeScorerConfig), {
            "template": "{prompt}{completion}", "answer_prefix": answer_prefix, "choices": ["A", "B"],
            "scores": [1.0, 0.0], "batch_size": batch_size, "max_length": max_length})
        self.judge = JudgeScorer(None, cfg, model, tokenizer)  # type: ignore[arg-type]  # model given: no ctx needed
        self.batch_size = batch_size

    def prob_a(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(P(A) (N,), mass (N,)) for each feedback message; mass = exp ℓ_A + exp ℓ_B."""
        rows = [self.judge.judge_ids(t, "") for t in texts]
        probs, masses = [], []
        model = self.judge.model
        was_training = model.training
        model.eval()  # the feedback model may be the policy itself, still in train mode: no dropout here
        try:
            for start in range(0, len(rows), self.batch_size):
                logps = self.judge.choice_logprobs(rows[start:start + self.batch_size])  # (b, 2)
                probs.append(soft_label(logps).cpu())  # (b,)
                masses.append(logps.exp().sum(dim=-1).cpu())  # (b,)
        finally:
            model.train(was_training)
        return torch.cat(probs), torch.cat(masses)

    def label(self, constitution: Constitution, prompts: list[Messages], first: list[str], second: list[str],
              principles: list[list[int]], swap: bool = True) -> list[dict]:
        """Soft labels P(first better than second) for each pair, with the per-principle judgements."""
        texts, where = [], []
        for i, (prompt, a, b) in enumerate(zip(prompts, first, second)):
            for j, k in enumerate(principles[i]):
                question = constitution.preference_principles[k].text
                texts.append(feedback_text(prompt, question, a, b, self.template))
                where.append((i, j, k, "first_as_a"))
                if swap:
                    texts.append(feedback_text(prompt, question, b, a, self.template))
                    where.append((i, j, k, "first_as_b"))
        probs, masses = self.prob_a(texts) if texts else (torch.zeros(0), torch.zeros(0))
        out: list[dict] = [{"judgements": []} for _ in prompts]
        current: dict[tuple[int, int], dict] = {}
        for (i, j, k, order), p, mass in zip(where, probs.tolist(), masses.tolist()):
            entry = current.get((i, j))
            if entry is None:
                entry = {"principle_index": k, "principle": constitution.preference_principles[k].name}
                current[(i, j)] = entry
                out[i]["judgements"].append(entry)
            if order == "first_as_a":
                entry["p_a_first_as_a"], entry["mass_first_as_a"] = p, mass
            else:
                entry["p_a_first_as_b"], entry["mass_first_as_b"] = p, mass
        for record in out:
            values = []
            for j in record["judgements"]:
                value = j["p_a_first_as_a"]
                if "p_a_first_as_b" in j:
                    value = 0.5 * (value + 1.0 - j["p_a_first_as_b"])
                j["p_first"] = value
                values.append(value)
            record["p_first"] = sum(values) / len(values)
        return out
