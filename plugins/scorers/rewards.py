"""Example verifiable rewards for ``scorer=function`` (used by the online RL demos).

    scorer=function scorer.fn=alignkit.plugins.scorers.rewards:brevity '+scorer.kwargs={max_words: 15}'
"""

from __future__ import annotations

import re
from typing import Any

REFUSAL = re.compile(r"\b(I can(no|')t|I cannot|I'm sorry|I am sorry|I'm not able|I am not able|as an AI)\b",
                     re.IGNORECASE)


def brevity(prompts: list[str], completions: list[str], max_words: int = 15, **columns: Any) -> list[float]:
    """1 for a non-empty, non-refusing answer of at most ``max_words`` words; ``max_words / words`` above.

    r = 0 if the answer is empty or refuses (``REFUSAL``), 1 if words ≤ N, N / words otherwise, so
    a 30-word answer gets 0.5 for N = 15: a graded signal from the first step.
    """
    rewards = []
    for text in completions:
        words = len(text.split())
        if words == 0 or REFUSAL.search(text):
            rewards.append(0.0)
        else:
            rewards.append(1.0 if words <= max_words else max_words / words)
    return rewards


def includes_word(prompts: list[str], completions: list[str], word: str = "indeed", **columns: Any) -> list[float]:
    """1 if the completion contains ``word`` (case-insensitive, whole word), else 0."""
    pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
    return [1.0 if pattern.search(text) else 0.0 for text in completions]
