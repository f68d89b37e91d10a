"""How a model's answers to ordinary prompts read: refusals, loops, answers cut at the limit.

Pure functions on answer texts, used by the answer probe (:mod:`alignkit.probe`) that compares a
policy's answers before and after training, and usable on any list of answers (e.g. the JSONL that
``alignkit generate`` writes). Each rate comes with a Wilson 95% interval, each mean with a normal
95% interval (:mod:`alignkit.stats`), so "did not get worse" is a statement about intervals.

Definitions:

- **refusal**: the answer declines or evades instead of answering: it matches one of
  :data:`REFUSAL_PATTERNS` ("I'm sorry", "I can't", "I'm not sure what you're asking", "as an AI",
  ...) in its first :data:`REFUSAL_WINDOW` characters (a disclaimer at the end of a real answer is
  not a refusal).
- **repeated 4-gram share** of an answer: among its word 4-grams (lower-cased ``\\w+`` words), the
  share that already occurred earlier in it: (n-grams − distinct n-grams) / n-grams; 0 for an answer
  of fewer than 4 words. An answer repeating one sentence to the token limit scores near 1, fluent
  prose near 0 (Welleck et al. 2020, "Neural text generation with unlikelihood training", use the
  same count at the sequence level).
- **looping**: repeated 4-gram share ≥ :data:`LOOP_SHARE`.
- **evasive** (a training target, ``data.drop_evasive``): a refusal, an answer that opens by asking the
  user a question (a "?" in its first :data:`QUESTION_WINDOW` characters: "Why do you want to know?"),
  or one of fewer than :data:`MIN_ANSWER_WORDS` words.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch

from .stats import mean_interval, wilson_interval

#: Openings of a refusal or an evasion (case-insensitive regular expressions).
REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bI(?:'m| am) (?:so )?sorry\b", r"\bsorry,? (?:but )?I\b", r"\bI apologi[sz]e\b",
    r"\bI (?:can(?:'t|not)|won't|will not|am unable to|'m unable to|am not able to|'m not able to) "
    r"(?:help|assist|answer|provide|do that|comply|fulfil|support|share|give|tell)",
    r"\bI(?:'m| am) not sure what you(?:'re| are)? (?:asking|mean|referring)",
    r"\bI(?:'m| am) not sure (?:if|whether) I (?:can|could|should) (?:help|assist|answer)",
    r"\bI (?:don't|do not) have the ability to\b",
    r"\bI don't (?:understand|know what you mean)", r"\bI do not understand\b",
    r"\bcould you (?:please )?(?:clarify|rephrase|be more specific)\b",
    r"\bas an AI\b", r"\bI(?:'m| am) (?:just )?an AI\b", r"\bI(?:'m| am) not (?:able|allowed|comfortable)\b",
)
_REFUSAL = re.compile("|".join(f"(?:{p})" for p in REFUSAL_PATTERNS), re.IGNORECASE)

#: Characters at the start of an answer searched for a refusal.
REFUSAL_WINDOW = 160

#: Repeated 4-gram share from which an answer counts as looping.
LOOP_SHARE = 0.2

#: Characters at the start of an answer in which a "?" makes it a question back to the user.
QUESTION_WINDOW = 60

#: Fewest words of an answer that is not evasive.
MIN_ANSWER_WORDS = 12

_WORD = re.compile(r"\w+")


def is_refusal(text: str) -> bool:
    """True when ``text`` opens with a refusal or an evasion (see :data:`REFUSAL_PATTERNS`)."""
    return _REFUSAL.search(text.replace("\u2019", "'")[:REFUSAL_WINDOW]) is not None


def is_evasive(text: str) -> bool:
    """True when ``text`` is a refusal, opens with a question back to the user, or is under
    :data:`MIN_ANSWER_WORDS` words: a training target that teaches not answering."""
    text = text.strip()
    return is_refusal(text) or "?" in text[:QUESTION_WINDOW] or len(words(text)) < MIN_ANSWER_WORDS


def words(text: str) -> list[str]:
    """Lower-cased ``\\w+`` words of ``text``."""
    return _WORD.findall(text.lower())


def repeated_ngram_share(tokens: Sequence[str], n: int = 4) -> float:
    """(n-grams − distinct n-grams) / n-grams of ``tokens``: the share of n-grams seen earlier; 0 when none.

    Args:
        tokens: the answer's words (:func:`words`) or token ids.
        n: n-gram size (≥ 1).

    Raises:
        ValueError: ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"n-gram size must be >= 1 (got {n})")
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def is_looping(text: str, share: float = LOOP_SHARE) -> bool:
    """True when ``text``'s repeated word 4-gram share is at least ``share``."""
    return repeated_ngram_share(words(text), 4) >= share


def _rate(prefix: str, flags: Sequence[bool]) -> dict[str, float]:
    n, hits = len(flags), float(sum(bool(f) for f in flags))
    low, high = wilson_interval(hits, n)
    return {f"{prefix}_rate": hits / n if n else float("nan"), f"{prefix}_ci_low": low, f"{prefix}_ci_high": high}


def paired_change(before: Sequence[float], after: Sequence[float]) -> tuple[float, float, float]:
    """Mean change after − before over the same N prompts, with a normal 95% interval of the paired
    differences: d̄ ± z·s_d/√N (s_d: sample std of d_i = after_i − before_i; flags count as 0/1).

    Pairing removes the prompt-to-prompt spread that two independent intervals carry, so a change
    whose interval excludes 0 is one the prompts show, and one that includes 0 is not shown.

    Raises:
        ValueError: different lengths, or fewer than 2 prompts.
    """
    if len(before) != len(after) or len(before) < 2:
        raise ValueError(f"paired change needs two equal lists of >= 2 values (got {len(before)} and {len(after)})")
    diffs = torch.tensor([float(y) - float(x) for x, y in zip(before, after)], dtype=torch.float64)  # (N,)
    return mean_interval(diffs)


def summarize(answers: Sequence[str], ended: Sequence[bool] | None = None) -> dict[str, float]:
    """Refusal, looping and cut-at-the-limit rates (Wilson 95%), mean repeated 4-gram share (normal 95%).

    Args:
        answers: N answer texts.
        ended: N flags, False where the answer was cut by the token limit (None: not known; no
            ``cut_*`` keys then).

    Returns:
        ``answers`` (N), ``refusal_rate`` / ``_ci_low`` / ``_ci_high``, the same for ``looping`` and
        ``cut``, ``repeated_4gram_share`` / ``_ci_low`` / ``_ci_high``, ``empty`` (count), ``words``
        (mean words per answer).

    Raises:
        ValueError: no answers, or ``ended`` of another length.
    """
    if not answers:
        raise ValueError("no answers to summarize")
    if ended is not None and len(ended) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(ended)} ended flags")
    split = [words(a) for a in answers]
    shares = torch.tensor([repeated_ngram_share(w, 4) for w in split], dtype=torch.float64)  # (N,)
    mean, low, high = mean_interval(shares)
    out = {"answers": float(len(answers)), **_rate("refusal", [is_refusal(a) for a in answers]),
           **_rate("looping", (shares >= LOOP_SHARE).tolist()),
           "repeated_4gram_share": mean, "repeated_4gram_share_ci_low": low, "repeated_4gram_share_ci_high": high,
           "empty": float(sum(1 for a in answers if not a.strip())), "words": sum(map(len, split)) / len(split)}
    if ended is not None:
        out.update(_rate("cut", [not e for e in ended]))
    return out
