"""``scorer=keywords``: a deterministic, rule-based reward on completion texts.

For each completion y::

    r(y) = weight · (#{k ∈ include : k occurs in y} − #{k ∈ exclude : k occurs in y})
           − length_weight · |words(y) − target_words| / target_words      (when target_words is set)

Each keyword counts once, however often it occurs, so repeating a keyword earns nothing (a cheap
guard against the most obvious reward hacking). Useful as a verifiable reward for online methods and
to compose with learned scorers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

import torch

from alignkit.api import ConfigError, RolloutBatch, RunContext


@dataclass
class KeywordsConfig:
    """``scorer=keywords`` options.

    Attributes:
        name: ``keywords``.
        include: keywords (or phrases) that earn ``weight`` each when present.
        exclude: keywords that cost ``weight`` each when present.
        weight: reward per keyword.
        case_sensitive: match case exactly.
        whole_words: match whole words only (``cat`` does not match ``category``).
        target_words: a target completion length in words; null turns length shaping off.
        length_weight: penalty per relative deviation from ``target_words``.
    """

    name: str = "keywords"
    include: List[str] = field(default_factory=list)
    exclude: List[str] = field(default_factory=list)
    weight: float = 1.0
    case_sensitive: bool = False
    whole_words: bool = True
    target_words: Optional[int] = None
    length_weight: float = 0.0


def _pattern(keyword: str, case_sensitive: bool, whole_words: bool) -> re.Pattern:
    body = re.escape(keyword)
    if whole_words:
        body = rf"(?<!\w){body}(?!\w)"
    return re.compile(body, 0 if case_sensitive else re.IGNORECASE)


def keyword_reward(completions: Sequence[str], include: Sequence[str] = (), exclude: Sequence[str] = (), *,
                   weight: float = 1.0, case_sensitive: bool = False, whole_words: bool = True,
                   target_words: int | None = None, length_weight: float = 0.0) -> torch.Tensor:
    """Keyword hits minus misses, with optional length shaping; see the module docstring.

    Args:
        completions: B completion texts.
        include: keywords rewarded once each when present.
        exclude: keywords penalised once each when present.
        weight: reward per keyword.
        case_sensitive: match case exactly.
        whole_words: match whole words only.
        target_words: target length in whitespace-separated words (None: no length term).
        length_weight: weight of the relative length deviation.

    Returns:
        (B,) float32 rewards.
    """
    wanted = [_pattern(k, case_sensitive, whole_words) for k in include]
    unwanted = [_pattern(k, case_sensitive, whole_words) for k in exclude]
    rewards = []
    for text in completions:
        hits = sum(1 for p in wanted if p.search(text)) - sum(1 for p in unwanted if p.search(text))
        value = weight * hits
        if target_words:
            value -= length_weight * abs(len(text.split()) - target_words) / target_words
        rewards.append(value)
    return torch.tensor(rewards, dtype=torch.float32)  # (B,)


class KeywordsScorer:
    """Scores a batch's completion texts (``batch.completions``, as online rollouts give them).

    A batch of token rows without texts (an offline batch) is decoded from its ``labels``: the
    completion tokens.
    """

    def __init__(self, cfg: Any, tokenizer: Any = None) -> None:
        if cfg.target_words is not None and cfg.target_words <= 0:
            raise ConfigError(f"scorer.target_words={cfg.target_words}: must be a positive number of words, or null")
        self.options = dict(include=list(cfg.include), exclude=list(cfg.exclude), weight=float(cfg.weight),
                            case_sensitive=bool(cfg.case_sensitive), whole_words=bool(cfg.whole_words),
                            target_words=cfg.target_words, length_weight=float(cfg.length_weight))
        self.tokenizer = tokenizer

    def _texts(self, batch: Any) -> list[str]:
        if isinstance(batch, RolloutBatch):
            return [str(c) for c in batch.completions]
        if self.tokenizer is not None and batch.labels.numel():
            return [self.tokenizer.decode([t for t in row.tolist() if t != -100], skip_special_tokens=True)
                    for row in batch.labels]
        raise ConfigError("scorer=keywords needs completion texts (batch.completions) or token labels to decode; "
                          "use it with an online method, e.g. method=reinforce")

    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        return keyword_reward(self._texts(batch), **self.options)  # (B,)


def build(ctx: RunContext, cfg: Any) -> KeywordsScorer:
    """Rule-based reward: +weight per wanted keyword, -weight per unwanted one, optional length shaping."""
    return KeywordsScorer(cfg, getattr(ctx, "tokenizer", None))
