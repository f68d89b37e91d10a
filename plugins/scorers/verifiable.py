"""Rewards you can verify: ``scorer=math`` (math-verify), ``exact_match``, ``regex`` / ``format`` and the
soft over-length penalty ``overlong``.

The checkers read each completion and the prompt's other columns from the data (a reference ``answer``,
by default): a data row ``{"prompt": "What is 7 * 8?", "answer": "56"}`` reaches the scorer as
``batch.columns[i]["answer"]``. Each check runs under a time limit; one that raises or times out
scores 0 and is counted (``scorer/<name>_errors``, ``_timeouts``, ``_seconds`` in the step's metrics),
never a crash (:class:`alignkit.api.Checker`).
"""

from __future__ import annotations

import logging
import re
import string
from dataclasses import dataclass
from typing import Any, Optional

import torch

from alignkit.api import Checker, ConfigError, RolloutBatch, RunContext, Samples


def _gold(row: dict[str, Any], field: str, name: str) -> str:
    if field not in row or row[field] is None:
        raise KeyError(f"scorer={name}: the prompt has no '{field}' column")
    return str(row[field])


# ----------------------------------------------------------------------------- math
@dataclass
class MathScorerConfig:
    """``scorer=math`` options.

    Attributes:
        name: ``math``.
        answer_field: the data column holding the reference answer.
        timeout_s: the time limit of one check (parsing and comparing), in seconds.
    """

    name: str = "math"
    answer_field: str = "answer"
    timeout_s: float = 5.0


def _drop_timeout_notice(record: logging.LogRecord) -> bool:
    # math-verify warns once that its own (signal-based) timeouts are off: ours (the Checker's) are on.
    return not record.getMessage().startswith("Timeout is disabled")


for _logger in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_logger).addFilter(_drop_timeout_notice)


def math_equal(completion: str, gold: str) -> bool:
    """Whether the completion's final answer equals ``gold`` mathematically, by math-verify (Hugging Face):
    boxed answers, plain numbers, fractions against decimals, LaTeX; with no boxed answer the last number
    in the text is taken. ``gold`` is a number or LaTeX (written ``$...$`` when it is not already)."""
    from math_verify import parse, verify

    gold = gold.strip()
    if not (gold.startswith("$") or "\\boxed" in gold):
        gold = f"${gold}$"
    # Timeouts are ours (the Checker's): math-verify's own use signal.alarm and refuse other threads.
    expected = parse(gold, parsing_timeout=None)
    answer = parse(completion, parsing_timeout=None)
    return bool(expected) and bool(answer) and bool(verify(expected, answer, timeout_seconds=None))


class MathScorer:
    """1.0 when the completion's answer equals the reference mathematically (math-verify), else 0.0."""

    def __init__(self, cfg: Any) -> None:
        field = cfg.answer_field
        self.checker = Checker(lambda completion, row, prompt: float(math_equal(completion, _gold(row, field, "math"))),
                               "math", cfg.timeout_s)

    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        return self.checker(batch)  # (N,)

    def pop_stats(self) -> dict[str, float]:
        return self.checker.pop_stats()


def build_math(ctx: RunContext, cfg: Any) -> MathScorer:
    """1 if the final answer equals the data's reference answer mathematically (math-verify), else 0."""
    return MathScorer(cfg)


# ----------------------------------------------------------------------------- exact match
@dataclass
class ExactMatchConfig:
    """``scorer=exact_match`` options.

    Attributes:
        name: ``exact_match``.
        answer_field: the data column holding the reference answer.
        extract: a regular expression whose first group is the answer in the completion (null: the
            whole completion).
        case_sensitive: compare letters' case too.
        timeout_s: the time limit of one check.
    """

    name: str = "exact_match"
    answer_field: str = "answer"
    extract: Optional[str] = None
    case_sensitive: bool = False
    timeout_s: float = 1.0


def normalize_answer(text: str, *, case_sensitive: bool = False) -> str:
    """``text`` without surrounding whitespace and punctuation, inner whitespace collapsed (SQuAD-style)."""
    text = " ".join(text.split()).strip(string.punctuation + string.whitespace)
    return text if case_sensitive else text.lower()


class ExactMatchScorer:
    """1.0 when the (extracted, normalised) completion equals the normalised reference answer."""

    def __init__(self, cfg: Any) -> None:
        try:
            pattern = re.compile(cfg.extract, re.S) if cfg.extract else None
        except re.error as exc:
            raise ConfigError(f"scorer.extract={cfg.extract!r}: not a regular expression ({exc})") from None
        field, case = cfg.answer_field, bool(cfg.case_sensitive)

        def check(completion: str, row: dict[str, Any], prompt: str) -> float:
            if pattern is not None:
                found = pattern.search(completion)
                if found is None:
                    return 0.0
                completion = found.group(1) if found.groups() else found.group(0)
            gold = _gold(row, field, "exact_match")
            return float(normalize_answer(completion, case_sensitive=case) == normalize_answer(gold, case_sensitive=case))

        self.checker = Checker(check, "exact_match", cfg.timeout_s)

    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        return self.checker(batch)  # (N,)

    def pop_stats(self) -> dict[str, float]:
        return self.checker.pop_stats()


def build_exact_match(ctx: RunContext, cfg: Any) -> ExactMatchScorer:
    """1 if the (extracted) answer equals the data's reference answer after normalisation, else 0."""
    return ExactMatchScorer(cfg)


# ----------------------------------------------------------------------------- regex / format
@dataclass
class RegexScorerConfig:
    """``scorer=regex`` / ``scorer=format`` options.

    Attributes:
        name: ``regex`` or ``format``.
        pattern: the regular expression (Python syntax, DOTALL). ``format``'s default: a final answer in
            ``\\boxed{...}``.
        fullmatch: the whole completion must match (false: a match anywhere).
        reward: the score of a match (0 otherwise).
    """

    name: str = "regex"
    pattern: str = "???"
    fullmatch: bool = False
    reward: float = 1.0


class RegexScorer:
    """``reward`` when the completion matches ``pattern``, else 0 (a format rule: answer inside tags, ...)."""

    def __init__(self, cfg: Any) -> None:
        try:
            self.pattern = re.compile(cfg.pattern, re.S)
        except re.error as exc:
            raise ConfigError(f"scorer.pattern={cfg.pattern!r}: not a regular expression ({exc})") from None
        self.fullmatch, self.reward = bool(cfg.fullmatch), float(cfg.reward)

    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        match = self.pattern.fullmatch if self.fullmatch else self.pattern.search
        return torch.tensor([self.reward if match(c) else 0.0 for c in batch.completions], dtype=torch.float32)  # (N,)


def build_regex(ctx: RunContext, cfg: Any) -> RegexScorer:
    """``reward`` if the completion matches a regular expression (a format rule), else 0."""
    return RegexScorer(cfg)


# ----------------------------------------------------------------------------- soft over-length penalty
@dataclass
class OverlongConfig:
    """``scorer=overlong`` options (DAPO's soft over-length punishment, Yu et al. 2025, eq. 13).

    Attributes:
        name: ``overlong``.
        max_tokens: L_max, the length at which the penalty reaches −1 (null: the rollout's
            ``max_new_tokens``).
        buffer: L_cache, the tokens before L_max over which the penalty grows linearly from 0.
    """

    name: str = "overlong"
    max_tokens: Optional[int] = None
    buffer: int = 16


def overlong_penalty(lengths: torch.Tensor, max_tokens: int, buffer: int) -> torch.Tensor:
    r"""DAPO's soft over-length penalty (Yu et al. 2025, https://arxiv.org/abs/2503.14476, eq. 13).

    Formula, for a completion of |y| tokens::

        0                              if |y| ≤ L_max − L_cache
        (L_max − L_cache − |y|) / L_cache  if L_max − L_cache < |y| ≤ L_max
        −1                             if |y| > L_max

    Args:
        lengths: (N,) completion lengths in tokens.
        max_tokens: L_max. buffer: L_cache (> 0).

    Returns:
        (N,) penalties in [−1, 0].
    """
    start = max_tokens - buffer
    ramp = (start - lengths.float()) / buffer  # (N,)
    return torch.where(lengths <= start, torch.zeros_like(ramp), torch.where(lengths <= max_tokens, ramp, -torch.ones_like(ramp)))


class OverlongScorer:
    """The soft over-length penalty of each completion (a component of ``weighted_sum``, typically)."""

    def __init__(self, max_tokens: int, buffer: int) -> None:
        if buffer < 1 or max_tokens <= buffer:
            raise ConfigError(f"scorer.buffer={buffer} must be >= 1 and below scorer.max_tokens={max_tokens}")
        self.max_tokens, self.buffer = max_tokens, buffer

    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        lengths = batch.completion_lengths().cpu()  # (N,) completion tokens as sampled, the end token included
        return overlong_penalty(lengths, self.max_tokens, self.buffer)  # (N,)


def build_overlong(ctx: RunContext, cfg: Any) -> OverlongScorer:
    """DAPO's soft over-length penalty: 0 up to max_tokens − buffer, then down to −1 at max_tokens."""
    max_tokens = cfg.max_tokens
    if max_tokens is None:
        if not isinstance(ctx.rollout, Samples):
            raise ConfigError("scorer=overlong needs scorer.max_tokens (or a sampling rollout's max_new_tokens)")
        max_tokens = ctx.rollout.max_new_tokens
    return OverlongScorer(int(max_tokens), int(cfg.buffer))
