"""Row parsers for the built-in data formats: raw dict -> canonical record (see ``alignkit.records``),
and the ``detect`` functions format inference asks (``alignkit.data.infer_format``).

Texts are strings or chat-message lists; messages keep every key (tool calls, names). Preference
rows may hold whole conversations in ``chosen`` / ``rejected`` (or in each of ``completions``), the
prompt included: the messages they share are then the prompt.
"""

from __future__ import annotations

import re
from typing import Any

from alignkit.api import Messages, as_messages, is_conversation, last_user_text, split_shared_prefix

_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def _answer(value: object, where: str) -> Messages:
    """An answer (string or messages) that is not empty: an empty one would teach only the end token."""
    messages = as_messages(value, "assistant", where)
    if not any(m["content"].strip() or m.get("tool_calls") for m in messages):
        raise ValueError(f"empty completion in field '{where}'")
    return messages


def _chat_field(row: dict) -> tuple[str, Any]:
    for key in ("messages", "conversations"):
        if key in row:
            return key, row[key]
    raise ValueError(f"need a 'messages' (or ShareGPT 'conversations') field (has {sorted(row)})")


def detect_chat(row: dict) -> bool:
    """A conversation in ``messages`` (``{role, content}``) or ``conversations`` (ShareGPT ``{from, value}``)."""
    return any(is_conversation(row.get(key)) for key in ("messages", "conversations"))


def parse_chat(row: dict) -> dict:
    """Chat messages ``{"messages": [...]}`` (or ShareGPT ``{"conversations": [{"from", "value"}]}``); the
    last message, the assistant's, is the completion; system messages and tool calls stay in the prompt."""
    key, value = _chat_field(row)
    messages = as_messages(value, "user", key)
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"field '{key}': the last message must be the assistant's (it is the completion), "
                         f"got {messages[-1]['role']!r}")
    _answer(messages[-1:], f"{key}[{len(messages) - 1}]")
    if len(messages) < 2:
        raise ValueError(f"field '{key}': need at least one prompt message before the assistant's answer")
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


def _with_prompt(row: dict, answers: list[Any], names: list[str]) -> tuple[Messages, list[Messages]]:
    """The prompt and the answers of a preference row, in either layout.

    ``prompt`` + answers (strings or assistant messages); or answers that are whole conversations
    (prompt included, ``prompt`` optional): their shared messages are the prompt.
    """
    parsed = [as_messages(a, "assistant", n) for a, n in zip(answers, names)]
    fields = " / ".join(names) if len(names) <= 3 else f"{names[0]} ... {names[-1]}"
    if all(p[0]["role"] == "assistant" for p in parsed):
        if row.get("prompt") is None:
            raise ValueError(f"fields {fields} hold answers only: the row needs a 'prompt' field (or whole "
                             "conversations in them, the prompt included)")
        prompt = as_messages(row["prompt"], "user", "prompt")
    else:
        prompt, parsed = split_shared_prefix(parsed, fields)
        if row.get("prompt") is not None:
            given = as_messages(row["prompt"], "user", "prompt")
            if last_user_text(given).strip() != last_user_text(prompt).strip():
                raise ValueError(f"field 'prompt' is not the prompt that fields {fields} hold (their last shared "
                                 "user message); drop one of them")
    for answer, name in zip(parsed, names):
        _answer(answer, name)
    return prompt, parsed


def detect_pairwise(row: dict) -> bool:
    """``chosen`` and ``rejected`` with a ``prompt``, or both whole conversations."""
    if "chosen" not in row or "rejected" not in row:
        return False
    return "prompt" in row or (is_conversation(row["chosen"]) and is_conversation(row["rejected"]))


def parse_pairwise(row: dict) -> dict:
    """Preference pairs: ``{"prompt", "chosen", "rejected"}``, optional ``margin`` and soft ``label``.

    ``chosen`` / ``rejected`` are strings or assistant messages, or whole conversations (the prompt
    included; ``prompt`` then optional): the messages they share are the prompt.
    """
    prompt, (chosen, rejected) = _with_prompt(row, [row["chosen"], row["rejected"]], ["chosen", "rejected"])
    record = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for key in ("margin", "label"):
        if key in row and row[key] is not None:
            if not isinstance(row[key], (int, float)) or isinstance(row[key], bool):
                raise ValueError(f"field '{key}' must be a number, got {type(row[key]).__name__}")
            record[key] = float(row[key])
    if "label" in record and not 0.0 <= record["label"] <= 1.0:
        raise ValueError(f"field 'label' must be a probability in [0, 1], got {record['label']}")
    return record


def detect_ranked(row: dict) -> bool:
    """``completions`` (a list) with a ``prompt``, or every completion a whole conversation."""
    completions = row.get("completions")
    if not isinstance(completions, list):
        return False
    return "prompt" in row or (bool(completions) and all(is_conversation(c) for c in completions))


def parse_ranked(row: dict) -> dict:
    """Ranked lists: ``{"prompt", "completions": [...]}`` best first, or with ``scores`` to sort by.

    Completions are strings or assistant messages, or whole conversations (the prompt included;
    ``prompt`` then optional): the messages they share are the prompt.
    """
    completions = row["completions"]
    if not isinstance(completions, list) or len(completions) < 2:
        raise ValueError("field 'completions' must be a list of at least 2 completions")
    if "scores" in row:
        scores = row["scores"]
        if not isinstance(scores, list) or len(scores) != len(completions):
            n = len(scores) if isinstance(scores, list) else type(scores).__name__
            raise ValueError(f"field 'scores' has {n} entries for {len(completions)} completions")
        order = sorted(range(len(completions)), key=lambda i: -float(scores[i]))
    else:
        order = list(range(len(completions)))
    # Errors name each completion by its place in the row, not in the sorted list.
    prompt, parsed = _with_prompt(row, [completions[i] for i in order], [f"completions[{i}]" for i in order])
    return {"prompt": prompt, "completions": parsed}


def parse_prompts(row: dict) -> dict:
    """Prompts: ``{"prompt": str|messages, ...}`` (online methods generate the completions); every other
    field is kept in the record's ``columns`` (a reference ``answer``, a level, ...) for scorers."""
    return {"prompt": as_messages(row["prompt"], "user", "prompt"),
            "columns": {k: v for k, v in row.items() if k != "prompt"}}


def detect_unpaired(row: dict) -> bool:
    """``prompt``, ``completion`` and a boolean ``label``."""
    return "prompt" in row and "completion" in row and isinstance(row.get("label"), bool)


def parse_unpaired(row: dict) -> dict:
    """Unpaired preferences (KTO-style): ``{"prompt", "completion", "label": true|false}``, one answer
    marked desirable (true) or not."""
    label = row["label"]
    if not isinstance(label, bool):
        if isinstance(label, int) and label in (0, 1):
            label = bool(label)
        else:
            raise ValueError(f"field 'label' must be true or false (is the answer desirable?), got {label!r}")
    record = parse_prompt_completion(row)
    record["label"] = label
    return record


def hh_turns(transcript: str) -> list[dict[str, str]]:
    """Split an HH-RLHF transcript ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` into chat messages."""
    if not isinstance(transcript, str):
        raise ValueError(f"transcript must be a string, got {type(transcript).__name__}")
    pieces = _TURN.split(transcript)
    if pieces[0].strip():
        raise ValueError("transcript does not start with '\\n\\nHuman:'")
    return [{"role": _ROLES[speaker], "content": text.strip()} for speaker, text in zip(pieces[1::2], pieces[2::2])]


def detect_hh_rlhf(row: dict) -> bool:
    """``chosen`` and ``rejected`` are HH-RLHF transcripts (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``)."""
    def starts_with_human(text: Any) -> bool:
        turn = _TURN.match(text.lstrip(" ")) if isinstance(text, str) else None
        return turn is not None and turn.group(1) == "Human"

    return starts_with_human(row.get("chosen")) and starts_with_human(row.get("rejected"))


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
