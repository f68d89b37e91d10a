"""The SteerLM attribute schema and the attribute string a prompt carries.

Paper: "SteerLM: Attribute Conditioned SFT as an (User-Steerable) Alternative to RLHF", Dong et al.,
2023, https://arxiv.org/abs/2310.05344.

An *attribute string* lists ``name:value`` pairs, comma-separated, in the schema's order, with integer
values in the schema's range::

    helpfulness:4,correctness:4,coherence:4,complexity:2,verbosity:0

The conditioned prompt carries the line ``Attributes: <attribute string>``, placed per the schema's
``placement``:

- ``end`` (default): a system message after the prompt's last turn, right before the answer. As in
  the paper, where the attribute label sits just before the response; it survives left truncation of
  long prompts (which keeps the latest turns), and the chat template's own default system prompt stays.
- ``start``: a system message first (an existing first system message follows on the next line).
- ``user``: the last user message gets the line appended after a blank line (for chat templates that
  accept a system message only at the start).

Attributes missing from a record are left out of its string rather than invented.
:func:`parse_attribute_string` reads it back, and also takes ``name=value`` pairs (the
``alignkit chat --attributes`` spelling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

Messages = list[dict[str, str]]

DEFAULT_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
SYSTEM_PREFIX = "Attributes: "
PLACEMENTS = ("end", "start", "user")


@dataclass(frozen=True)
class AttributeSchema:
    """Attribute names (in string order), their shared integer range, and values used when unspecified.

    Attributes:
        names: attribute names, in the order the attribute string lists them.
        min_value: lowest value (inclusive).
        max_value: highest value (inclusive).
        defaults: value for an attribute a chat request does not give (names outside ``names`` are
            ignored, so one defaults table serves schemas that use a subset).
        placement: where the attribute line goes in the prompt (``end``, ``start`` or ``user``).
    """

    names: tuple[str, ...] = DEFAULT_ATTRIBUTES
    min_value: int = 0
    max_value: int = 4
    defaults: Mapping[str, int] = field(default_factory=dict)
    placement: str = "end"

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("the attribute schema has no attributes")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate attribute names in {list(self.names)}")
        for name in self.names:
            if not name or any(c in name for c in ",:= \n"):
                raise ValueError(f"attribute name {name!r} must be non-empty without ',', ':', '=' or spaces")
        if self.min_value >= self.max_value:
            raise ValueError(f"attribute range [{self.min_value}, {self.max_value}] is empty")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement {self.placement!r}; expected one of {PLACEMENTS}")

    @classmethod
    def from_config(cls, method_cfg: Any) -> "AttributeSchema":
        """The schema of a ``method=steerlm`` config node (``attributes``, ``min_value``, ``max_value``, ``chat_defaults``)."""
        defaults = dict(method_cfg.get("chat_defaults") or {})
        return cls(names=tuple(str(n) for n in method_cfg.attributes), min_value=int(method_cfg.min_value),
                   max_value=int(method_cfg.max_value), defaults={str(k): int(v) for k, v in defaults.items()},
                   placement=str(method_cfg.get("placement", "end")))

    def check(self, name: str, value: Any) -> int:
        """``value`` as an int, if ``name`` is in the schema and ``value`` an integer in range (else ValueError)."""
        if name not in self.names:
            raise ValueError(f"unknown attribute {name!r}; the schema has {list(self.names)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise ValueError(f"attribute {name}={value!r} must be an integer in [{self.min_value}, {self.max_value}]")
        if not self.min_value <= value <= self.max_value:
            raise ValueError(f"attribute {name}={int(value)} is outside [{self.min_value}, {self.max_value}]")
        return int(value)

    def quantize(self, value: float) -> int:
        """A predicted score as an attribute value: rounded half up, clipped to the range."""
        if not math.isfinite(value):
            raise ValueError(f"predicted attribute score {value} is not finite")
        return int(min(self.max_value, max(self.min_value, math.floor(value + 0.5))))

    def with_defaults(self, values: Mapping[str, int]) -> dict[str, int]:
        """``values`` plus the schema's defaults for attributes it does not give."""
        filled = {n: self.defaults[n] for n in self.names if n in self.defaults}
        filled.update(values)
        return filled


def format_attribute_string(values: Mapping[str, Any], schema: AttributeSchema) -> str:
    """``{"verbosity": 0, "helpfulness": 4}`` -> ``"helpfulness:4,verbosity:0"`` (schema order, checked)."""
    checked = {name: schema.check(name, value) for name, value in values.items()}
    return ",".join(f"{name}:{checked[name]}" for name in schema.names if name in checked)


def parse_attribute_string(text: str, schema: AttributeSchema) -> dict[str, int]:
    """``"helpfulness:4,verbosity:0"`` or ``"verbosity=0,helpfulness=4"`` -> values (checked, schema order)."""
    text = text.strip()
    if text.startswith(SYSTEM_PREFIX.strip()):
        text = text[len(SYSTEM_PREFIX.strip()):].strip()
    values: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        sep = ":" if ":" in item else "="
        name, found, raw = item.partition(sep)
        if not found or not name.strip() or not raw.strip():
            raise ValueError(f"attribute {item!r} is not name:value or name=value")
        name = name.strip()
        if name in values:
            raise ValueError(f"attribute {name!r} is given twice")
        try:
            number = float(raw)
        except ValueError:
            raise ValueError(f"attribute {name}={raw.strip()!r} is not a number") from None
        values[name] = schema.check(name, number)
    return {name: values[name] for name in schema.names if name in values}


def condition_prompt(prompt: Messages, values: Mapping[str, Any], schema: AttributeSchema) -> Messages:
    """The prompt with its attribute line placed per ``schema.placement``; unchanged when ``values`` is empty."""
    text = format_attribute_string(values, schema)
    if not text:
        return list(prompt)
    line = SYSTEM_PREFIX + text
    if schema.placement == "end":
        return [*prompt, {"role": "system", "content": line}]
    if schema.placement == "start":
        if prompt and prompt[0]["role"] == "system":
            return [{"role": "system", "content": f"{line}\n{prompt[0]['content']}"}, *prompt[1:]]
        return [{"role": "system", "content": line}, *prompt]
    last_user = max((i for i, m in enumerate(prompt) if m["role"] == "user"), default=None)
    if last_user is None:
        raise ValueError("placement 'user' needs a user message in the prompt")
    out = [dict(m) for m in prompt]
    out[last_user]["content"] = f"{out[last_user]['content']}\n\n{line}"
    return out
