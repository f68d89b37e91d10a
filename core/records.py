"""Canonical records: what data formats produce and what objectives consume.

Every text is a list of chat messages ``{"role": ..., "content": ...}``.

=========  ==========================================================================
kind       fields
=========  ==========================================================================
tokens     ``prompt`` (messages), ``completion`` (messages); optional ``scores`` ({attribute: number}),
           ``attributes`` ({name: value} the method's ``condition`` writes into the prompt, e.g. SteerLM)
pairs      ``prompt``, ``chosen``, ``rejected``; optional ``margin`` (float), ``label`` (P(chosen>rejected))
ranked     ``prompt``, ``completions`` (list of messages, best first)
prompts    ``prompt``
=========  ==========================================================================

Records convert downwards where the meaning is clear: a pair is also an SFT example (its chosen
answer), any record is also a prompt, a ranked list also gives its (best, worst) pair.
"""

from __future__ import annotations

from typing import Any, Callable

Messages = list[dict[str, str]]


def last_user_text(messages: Messages) -> str:
    """The content of the last user message (the question a judge reads), or of the last message."""
    for message in reversed(messages):
        if message["role"] == "user":
            return message["content"]
    return messages[-1]["content"] if messages else ""


def as_messages(value: Any, role: str, where: str) -> Messages:
    """A string or a list of messages -> a non-empty list of messages (``ValueError`` otherwise)."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    raise ValueError(f"field '{where}' must be a string or a list of {{role, content}} messages, got {type(value).__name__}")


_CONVERSIONS: dict[tuple[str, str], Callable[[dict], dict]] = {
    ("pairs", "tokens"): lambda r: {"prompt": r["prompt"], "completion": r["chosen"]},
    ("ranked", "tokens"): lambda r: {"prompt": r["prompt"], "completion": r["completions"][0]},
    ("ranked", "pairs"): lambda r: {"prompt": r["prompt"], "chosen": r["completions"][0], "rejected": r["completions"][-1]},
    ("pairs", "ranked"): lambda r: {"prompt": r["prompt"], "completions": [r["chosen"], r["rejected"]]},
    ("tokens", "prompts"): lambda r: {"prompt": r["prompt"]},
    ("pairs", "prompts"): lambda r: {"prompt": r["prompt"]},
    ("ranked", "prompts"): lambda r: {"prompt": r["prompt"]},
}


def can_convert(source: str, target: str) -> bool:
    return source == target or (source, target) in _CONVERSIONS


def convert(record: dict, source: str, target: str) -> dict:
    """Turn a record of kind ``source`` into one of kind ``target``."""
    if source == target:
        return record
    return _CONVERSIONS[(source, target)](record)
