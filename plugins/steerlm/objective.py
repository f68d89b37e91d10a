"""``method=steerlm``: SFT on prompts that carry the answer's attribute string (Dong et al., 2023).

The objective is the registered ``sft`` method's (token-mean NLL of the answer, prompt masked); what
makes it SteerLM is the data: each record's ``attributes`` are written into its prompt by
:func:`condition` before tokenization, so the model learns p(answer | prompt, attributes) and, at
inference, follows the attribute values it is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from alignkit.api import ConfigError, RunContext

from .attributes import DEFAULT_ATTRIBUTES, AttributeSchema, Messages, condition_prompt, parse_attribute_string


@dataclass
class SteerLMConfig:
    """``method=steerlm`` options: the attribute schema.

    Attributes:
        name: ``steerlm``.
        attributes: attribute names, in the order the attribute string lists them.
        min_value: lowest attribute value.
        max_value: highest attribute value.
        chat_defaults: values ``alignkit chat --attributes`` (and ``alignkit steerlm measure``) use for
            attributes they are not given; names outside ``attributes`` are ignored. Training never
            fills in missing labels. (Not ``defaults``: Hydra reserves that key.)
        placement: where the ``Attributes: ...`` line goes: ``end`` (a system message right before the
            answer), ``start`` (a first system message) or ``user`` (appended to the last user message).
    """

    name: str = "steerlm"
    attributes: list[str] = field(default_factory=lambda: list(DEFAULT_ATTRIBUTES))
    min_value: int = 0
    max_value: int = 4
    chat_defaults: dict[str, int] = field(default_factory=lambda: {"helpfulness": 4, "correctness": 4, "coherence": 4,
                                                              "complexity": 2, "verbosity": 2})
    placement: str = "end"


def condition(cfg: Any, prompt: Messages, values: Mapping[str, Any] | str, *, fill_defaults: bool = False) -> Messages:
    """Write attribute ``values`` into ``prompt`` per the run's schema (``MethodSpec.condition``).

    ``values`` is a mapping (a record's ``attributes``; strings such as ``"4"`` are read as numbers)
    or an attribute string. ``fill_defaults`` (inference) adds ``method.chat_defaults`` for missing names.
    """
    schema = AttributeSchema.from_config(cfg.method)
    if isinstance(values, str):
        checked = parse_attribute_string(values, schema)
    else:
        text = ",".join(f"{name}:{value}" for name, value in values.items())
        checked = parse_attribute_string(text, schema)
    if fill_defaults:
        checked = schema.with_defaults(checked)
    return condition_prompt(prompt, checked, schema)


def build(ctx: RunContext) -> Any:
    """SteerLM: SFT on attribute-conditioned prompts (NLL of the answer given prompt and attributes)."""
    if ctx.cfg.data.format != "steerlm":
        ctx.log(f"steerlm: data.format={ctx.cfg.data.format} gives no 'attributes'; records train unconditioned "
                "unless the format keeps them (label data with `alignkit steerlm annotate|label`)")
    try:
        AttributeSchema.from_config(ctx.cfg.method)
    except ValueError as exc:
        raise ConfigError(f"method.attributes / method.min_value / method.max_value: {exc}") from None
    return ctx.registry.get("methods", "sft", where="method").build(ctx)
