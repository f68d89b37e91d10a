"""``data.format=steerlm``: answers labelled with attribute values, for attribute-conditioned SFT."""

from __future__ import annotations

from alignkit.api import as_messages


def _attribute_values(raw: object) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise ValueError(f"field 'attributes' must be an object of attribute -> integer, got {type(raw).__name__}")
    values: dict[str, int] = {}
    for name, value in raw.items():
        if value is None:  # an attribute nobody labelled: left out of the attribute string
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise ValueError(f"field 'attributes.{name}' must be an integer or null, got {value!r}")
        values[str(name)] = int(value)
    return values


def detect_steerlm(row: dict) -> bool:
    """An ``attributes`` object beside ``prompt`` / ``completion`` or ``messages``."""
    return isinstance(row.get("attributes"), dict) and ("messages" in row or ("prompt" in row and "completion" in row))


def parse_steerlm(row: dict) -> dict:
    """Attribute-labelled answers: ``{"prompt", "completion"}`` or ``{"messages"}``, plus ``"attributes": {name: int}``.

    The record keeps ``attributes``; the method (``method=steerlm``) checks them against its schema
    and writes them into the prompt as ``Attributes: name:value,...`` before tokenization.
    """
    if "messages" in row:
        messages = as_messages(row["messages"], "user", "messages")
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise ValueError("field 'messages' must end with the assistant's answer after at least one prompt message")
        prompt, completion = messages[:-1], messages[-1:]
    elif "prompt" in row and "completion" in row:
        prompt = as_messages(row["prompt"], "user", "prompt")
        completion = as_messages(row["completion"], "assistant", "completion")
    else:
        raise ValueError(f"need 'prompt' and 'completion', or 'messages' (has {sorted(row)})")
    if not any(m["content"].strip() for m in completion):
        raise ValueError("empty completion")
    return {"prompt": prompt, "completion": completion, "attributes": _attribute_values(row["attributes"])}
