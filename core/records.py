"""Canonical records: what data formats produce and what objectives consume.

Every text is a list of chat messages ``{"role": ..., "content": ...}``; a message keeps every other
key it has (``tool_calls``, ``name``, ``tool_call_id``, ...), and the chat template sees them all.

=========  ==========================================================================
kind       fields
=========  ==========================================================================
tokens     ``prompt`` (messages), ``completion`` (messages); optional ``scores`` ({attribute: number}),
           ``attributes`` ({name: value} the method's ``condition`` writes into the prompt, e.g. SteerLM)
pairs      ``prompt``, ``chosen``, ``rejected``; optional ``margin`` (float), ``label`` (P(chosen>rejected))
ranked     ``prompt``, ``completions`` (list of messages, best first)
prompts    ``prompt``, ``columns`` ({name: value}: the row's other fields, e.g. a reference ``answer``)
unpaired   ``prompt``, ``completion``, ``label`` (bool: a desirable answer or not; KTO-style data)
=========  ==========================================================================

Records convert downwards where the meaning is clear: a pair is also an SFT example (its chosen
answer), any record is also a prompt, a ranked list also gives its (best, worst) pair.
"""

from __future__ import annotations

from typing import Any, Callable

Message = dict[str, Any]
Messages = list[dict[str, Any]]

#: ShareGPT speakers (``{"from": ..., "value": ...}``) -> chat roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "tool": "tool", "observation": "tool", "function_call": "assistant"}
#: Roles a completion (what the model learns to say) may hold: its answer, tool calls and tool results.
_COMPLETION_ROLES = ("assistant", "tool", "function", "ipython")


def last_user_text(messages: Messages) -> str:
    """The content of the last user message (the question a judge reads), or of the last message."""
    for message in reversed(messages):
        if message["role"] == "user":
            return message["content"]
    return messages[-1]["content"] if messages else ""


def is_message(value: Any) -> bool:
    """A chat message: a dict with ``role`` (or ShareGPT's ``from``)."""
    return isinstance(value, dict) and ("role" in value or "from" in value)


def is_conversation(value: Any) -> bool:
    """A non-empty list of chat messages."""
    return isinstance(value, list) and bool(value) and all(is_message(m) for m in value)


def as_message(value: Any, where: str) -> Message:
    """One message, ``{role, content}`` or ShareGPT ``{from, value}``, as ``{role, content, **other keys}``.

    ``content`` is a string; it may be null or absent only beside ``tool_calls`` (then ``""``, which
    chat templates render as no text). Every other key is kept as it is.

    Raises:
        ValueError: naming ``where`` (``prompt[1]``) and what was expected.
    """
    if not isinstance(value, dict):
        raise ValueError(f"field '{where}' must be a {{role, content}} message, got {type(value).__name__}")
    message = dict(value)
    if "role" not in message and "from" in message:  # ShareGPT: {"from": "human", "value": "..."}
        speaker = message.pop("from")
        if speaker not in SHAREGPT_ROLES:
            raise ValueError(f"field '{where}.from' is {speaker!r}; expected one of {', '.join(SHAREGPT_ROLES)}")
        message["role"] = SHAREGPT_ROLES[speaker]
        if "content" not in message:
            message["content"] = message.pop("value", None)
    if "role" not in message:
        raise ValueError(f"field '{where}' has no 'role' (keys: {sorted(value)}); expected a {{role, content}} message")
    if not isinstance(message["role"], str):
        raise ValueError(f"field '{where}.role' must be a string, got {type(message['role']).__name__}")
    content = message.get("content")
    if content is None and message.get("tool_calls"):
        content = ""
    if not isinstance(content, str):
        got = "nothing" if content is None else type(content).__name__
        raise ValueError(f"field '{where}.content' must be a string, got {got}")
    message["content"] = content
    return {"role": message.pop("role"), "content": message.pop("content"), **message}


def as_messages(value: Any, role: str, where: str) -> Messages:
    """A string or a list of messages -> a non-empty list of messages (``ValueError`` otherwise).

    A string becomes one message of ``role``; messages keep every key (see :func:`as_message`).
    """
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value:
        return [as_message(m, f"{where}[{i}]") for i, m in enumerate(value)]
    got = "an empty list" if isinstance(value, list) else type(value).__name__
    raise ValueError(f"field '{where}' must be a string or a list of {{role, content}} messages, got {got}")


def split_shared_prefix(conversations: list[Messages], fields: str) -> tuple[Messages, list[Messages]]:
    """Whole conversations (prompt included) -> ``(prompt, continuations)``: the prompt is the messages
    they all share up to the first answer, each continuation what follows (the answer, tool calls and
    tool results; no user turn).

    The layout of preference datasets whose ``chosen`` / ``rejected`` hold the whole conversation
    (TRL's "implicit prompt").

    Args:
        conversations: two or more message lists.
        fields: how errors name them (``chosen / rejected``).

    Raises:
        ValueError: no shared prompt, or conversations that differ before their last answer.
    """
    shortest = min(len(c) for c in conversations)
    shared = 0
    while shared < shortest and all(c[shared] == conversations[0][shared] for c in conversations[1:]):
        shared += 1
    # Every conversation keeps a continuation, and each one starts with the answer.
    while shared > 0 and (shared == shortest or any(c[shared]["role"] != "assistant" for c in conversations)):
        shared -= 1
    if shared == 0:
        raise ValueError(f"fields {fields} share no prompt: each must hold the same prompt messages, then its "
                         "answer (or give the prompt in its own 'prompt' field)")
    prompt = conversations[0][:shared]
    tails = [c[shared:] for c in conversations]
    for tail in tails:
        turn = next((m for m in tail if m["role"] not in _COMPLETION_ROLES), None)
        if turn is not None:
            raise ValueError(f"fields {fields} differ before their last {turn['role']} turn (after message "
                             f"{shared}): only the answers after the shared prompt may differ")
    return prompt, tails


def _prompts(record: dict) -> dict:
    return {"prompt": record["prompt"], "columns": dict(record.get("columns") or {})}


_CONVERSIONS: dict[tuple[str, str], Callable[[dict], dict]] = {
    ("pairs", "tokens"): lambda r: {"prompt": r["prompt"], "completion": r["chosen"]},
    ("ranked", "tokens"): lambda r: {"prompt": r["prompt"], "completion": r["completions"][0]},
    ("ranked", "pairs"): lambda r: {"prompt": r["prompt"], "chosen": r["completions"][0], "rejected": r["completions"][-1]},
    ("pairs", "ranked"): lambda r: {"prompt": r["prompt"], "completions": [r["chosen"], r["rejected"]]},
    ("tokens", "prompts"): _prompts,
    ("pairs", "prompts"): _prompts,
    ("ranked", "prompts"): _prompts,
    ("unpaired", "prompts"): _prompts,
}


def can_convert(source: str, target: str) -> bool:
    return source == target or (source, target) in _CONVERSIONS


def convert(record: dict, source: str, target: str) -> dict:
    """Turn a record of kind ``source`` into one of kind ``target``."""
    if source == target:
        return record
    return _CONVERSIONS[(source, target)](record)
