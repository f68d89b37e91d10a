"""Row parsers for the built-in data formats: raw dict -> canonical record (see ``alignkit.records``)."""

from __future__ import annotations

import re

from alignkit.api import as_messages

_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def _answer(value: object, where: str) -> list[dict[str, str]]:
    """An answer (string or messages) that is not empty: an empty one would teach only the end token."""
    messages = as_messages(value, "assistant", where)
    if not any(m["content"].strip() for m in messages):
        raise ValueError(f"empty completion in field '{where}'")
    return messages


def parse_chat(row: dict) -> dict:
    """Chat messages ``{"messages": [...]}``; the last assistant message is the completion."""
    messages = as_messages(row["messages"], "user", "messages")
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's (it is the completion)")
    _answer(messages[-1:], "messages[-1]")
    if len(messages) < 2:
        raise ValueError("need at least one prompt message before the assistant's answer")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def parse_prompt_completion(row: dict) -> dict:
    """Prompt / completion pairs: ``{"prompt": str|messages, "completion": str|messages}``."""
    return {"prompt": as_messages(row["prompt"], "user", "prompt"),
            "completion": _answer(row["completion"], "completion")}


def parse_scored(row: dict) -> dict:
    """Scored answers: ``{"prompt", "completion", "scores": {attribute: number}}`` (attribute regression)."""
    record = parse_prompt_completion(row)
    scores = row["scores"]
    if not isinstance(scores, dict) or not scores:
        raise ValueError(f"field 'scores' must be a non-empty object of attribute -> number, got {type(scores).__name__}")
    for key, value in scores.items():
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise ValueError(f"field 'scores.{key}' must be a number or null, got {type(value).__name__}")
    record["scores"] = {str(k): (None if v is None else float(v)) for k, v in scores.items()}
    return record


def parse_pairwise(row: dict) -> dict:
    """Preference pairs: ``{"prompt", "chosen", "rejected"}``, optional ``margin`` and soft ``label``."""
    record = {"prompt": as_messages(row["prompt"], "user", "prompt"),
              "chosen": _answer(row["chosen"], "chosen"),
              "rejected": _answer(row["rejected"], "rejected")}
    for key in ("margin", "label"):
        if key in row and row[key] is not None:
            if not isinstance(row[key], (int, float)) or isinstance(row[key], bool):
                raise ValueError(f"field '{key}' must be a number, got {type(row[key]).__name__}")
            record[key] = float(row[key])
    if "label" in record and not 0.0 <= record["label"] <= 1.0:
        raise ValueError(f"field 'label' must be a probability in [0, 1], got {record['label']}")
    return record


def parse_ranked(row: dict) -> dict:
    """Ranked lists: ``{"prompt", "completions": [...]}`` best first, or with ``scores`` to sort by."""
    completions = row["completions"]
    if not isinstance(completions, list) or len(completions) < 2:
        raise ValueError("field 'completions' must be a list of at least 2 completions")
    if "scores" in row:
        scores = row["scores"]
        if not isinstance(scores, list) or len(scores) != len(completions):
            n = len(scores) if isinstance(scores, list) else type(scores).__name__
            raise ValueError(f"field 'scores' has {n} entries for {len(completions)} completions")
        order = sorted(range(len(completions)), key=lambda i: -float(scores[i]))
        completions = [completions[i] for i in order]
    return {"prompt": as_messages(row["prompt"], "user", "prompt"),
            "completions": [_answer(c, f"completions[{i}]") for i, c in enumerate(completions)]}


def parse_prompts(row: dict) -> dict:
    """Prompts only: ``{"prompt": str|messages}`` (online methods generate the completions)."""
    return {"prompt": as_messages(row["prompt"], "user", "prompt")}


def hh_turns(transcript: str) -> list[dict[str, str]]:
    """Split an HH-RLHF transcript ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` into chat messages."""
    if not isinstance(transcript, str):
        raise ValueError(f"transcript must be a string, got {type(transcript).__name__}")
    pieces = _TURN.split(transcript)
    if pieces[0].strip():
        raise ValueError("transcript does not start with '\\n\\nHuman:'")
    return [{"role": _ROLES[speaker], "content": text.strip()} for speaker, text in zip(pieces[1::2], pieces[2::2])]


def parse_hh_rlhf(row: dict) -> dict:
    """Anthropic HH-RLHF transcripts ``{"chosen", "rejected"}``: shared turns -> prompt, last replies -> pair."""
    chosen, rejected = hh_turns(row["chosen"]), hh_turns(row["rejected"])
    if not chosen or chosen[-1]["role"] != "assistant" or not rejected or rejected[-1]["role"] != "assistant":
        raise ValueError("each transcript must end with an Assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("chosen and rejected transcripts differ before their last Assistant turn")
    if not chosen[-1]["content"] or not rejected[-1]["content"]:
        raise ValueError("empty completion (the last Assistant turn is empty)")
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}
