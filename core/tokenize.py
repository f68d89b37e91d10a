"""Records -> token ids, with the chat template, prompt masking and truncation accounting.

Labels are ``-100`` on prompt tokens and padding, so only completion tokens are trained on. The
completion is the suffix the chat template adds after the generation prompt (for ChatML:
``answer<|im_end|>\\n``), so the model also learns to stop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import DataError
from .records import Messages

IGNORE_INDEX = -100
#: Rendered prompts an :class:`Encoder` remembers (the chosen and rejected answers of a pair share one).
_HEAD_CACHE = 4096


@dataclass
class TokenizeStats:
    """How many examples were truncated, and dropped because truncation left nothing to learn; logged
    once per dataset.

    Attributes:
        prompts_truncated: prompts cut to ``data.max_prompt_length``.
        completions_truncated: completions cut to fit ``data.max_length``.
        dropped: why records were dropped (``"pairs identical after truncation"``) -> how many
            (:func:`alignkit.data.encode_records`).
    """

    prompts_truncated: int = 0
    completions_truncated: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """``truncated prompts 0, truncated completions 16; dropped: 8 pairs identical after truncation``."""
        text = f"truncated prompts {self.prompts_truncated}, truncated completions {self.completions_truncated}"
        if self.dropped:
            text += "; dropped: " + ", ".join(f"{n} {why}" for why, n in self.dropped.items())
        return text


class Encoder:
    """Encodes prompt / completion messages for one tokenizer and one ``data`` config.

    Args:
        tokenizer: a Hugging Face tokenizer.
        max_length: cap on prompt + completion tokens.
        max_prompt_length: cap on prompt tokens (the prompt keeps its end: the latest turns matter most).
        truncation: ``left`` truncates the prompt and counts it; ``fail`` raises.
        use_chat_template: apply the tokenizer's chat template (required when it has one to give).
        system_prompt: an optional system message put before every prompt.
    """

    def __init__(self, tokenizer: Any, *, max_length: int, max_prompt_length: int, truncation: str = "left",
                 use_chat_template: bool = True, system_prompt: str | None = None) -> None:
        if truncation not in ("left", "fail"):
            raise DataError(f"data.truncation={truncation!r}; expected 'left' or 'fail'")
        if max_prompt_length >= max_length:
            raise DataError(f"data.max_prompt_length ({max_prompt_length}) must be below data.max_length ({max_length})")
        if use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise DataError(
                f"the tokenizer ({getattr(tokenizer, 'name_or_path', '') or 'model.tokenizer_path'}) has no chat "
                "template; set data.chat_template=false to train on plain text"
            )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.truncation = truncation
        self.use_chat_template = use_chat_template
        self.system_prompt = system_prompt
        self.stats = TokenizeStats()
        self._heads: dict[str, list[int]] = {}  # rendered prompts: a pair encodes its prompt four times
        self._fulls: dict[str, list[int]] = {}  # whole conversations tokenized ahead by warm(), used once

    def _head_ids(self, prompt: Messages) -> list[int]:
        """``apply_chat_template(prompt, add_generation_prompt=True)`` token ids, remembered per prompt."""
        key = _key(prompt)
        ids = self._heads.get(key)
        if ids is None:
            if len(self._heads) >= _HEAD_CACHE:
                self._heads.clear()
            ids = self._heads[key] = list(self.tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=True, return_dict=False))
        return list(ids)

    def warm(self, items: Iterable[tuple[Messages, Messages | None]]) -> None:
        """Tokenize ahead, in two batched calls, what encoding ``items`` (prompt, completion or None) asks for.

        ``apply_chat_template`` on a batch of conversations renders each one and tokenizes them all in
        one call of the (parallel) tokenizer: the same ids as one call per conversation, a fraction of
        the time. Plain-text mode needs nothing.
        """
        if not self.use_chat_template:
            return
        heads: dict[str, Messages] = {}
        fulls: dict[str, Messages] = {}
        for prompt, completion in items:
            prompt = self._with_system(prompt)
            key = _key(prompt)
            if key not in self._heads:
                heads[key] = prompt
            if completion is not None:
                fulls[_key(prompt + completion)] = prompt + completion
        if len(self._heads) + len(heads) > _HEAD_CACHE:
            self._heads.clear()
        if heads:
            ids = self.tokenizer.apply_chat_template(list(heads.values()), add_generation_prompt=True, tokenize=True,
                                                     return_dict=False)
            self._heads.update(zip(heads, (list(i) for i in ids)))
        if fulls:
            ids = self.tokenizer.apply_chat_template(list(fulls.values()), tokenize=True, return_dict=False)
            self._fulls.update(zip(fulls, (list(i) for i in ids)))

    def forget(self) -> None:
        """Drop what :meth:`warm` tokenized ahead and was not used."""
        self._fulls.clear()

    def _with_system(self, prompt: Messages) -> Messages:
        if self.system_prompt and (not prompt or prompt[0]["role"] != "system"):
            return [{"role": "system", "content": self.system_prompt}, *prompt]
        return prompt

    def prompt_ids(self, prompt: Messages, where: str = "") -> list[int]:
        """Token ids of the prompt, ending with the generation prompt (``<|im_start|>assistant\\n``).

        With the chat template, exactly what ``apply_chat_template`` gives (a template that wants BOS
        writes it; nothing is added). In plain-text mode, exactly what ``tokenizer(text)`` gives for the
        contents joined by blank lines, the special tokens the tokenizer adds (BOS) included; left
        truncation keeps those leading tokens and cuts the text after them.
        """
        prompt = self._with_system(prompt)
        lead = 0
        if self.use_chat_template:
            ids = self._head_ids(prompt)
        else:
            ids, lead = text_ids(self.tokenizer, "\n\n".join(m["content"] for m in prompt) + "\n\n")
        if len(ids) > self.max_prompt_length:
            if self.truncation == "fail":
                raise DataError(
                    f"{where}: prompt has {len(ids)} tokens > data.max_prompt_length={self.max_prompt_length} "
                    "(set data.truncation=left to truncate instead)"
                )
            self.stats.prompts_truncated += 1
            ids = truncate_left(ids, self.max_prompt_length, keep=lead)
        return list(ids)

    def completion_ids(self, prompt: Messages, completion: Messages) -> list[int]:
        """Token ids the model must produce after the prompt, end-of-turn included."""
        if not self.use_chat_template:
            text = "\n\n".join(m["content"] for m in completion)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        prompt = self._with_system(prompt)
        head = self._head_ids(prompt)
        full = self._fulls.pop(_key(prompt + completion), None)
        if full is None:
            full = self.tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=False)
        if list(full[: len(head)]) != list(head):
            # Templates that rewrite earlier turns: fall back to encoding the answer text alone.
            text = "".join(m["content"] for m in completion)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return list(full[len(head):])

    def encode(self, prompt: Messages, completion: Messages, where: str = "") -> dict[str, list[int]]:
        """``input_ids`` and ``labels`` (prompt masked) for one prompt/completion pair."""
        p_ids = self.prompt_ids(prompt, where)
        c_ids = self.completion_ids(prompt, completion)
        if not c_ids:
            raise DataError(f"{where}: empty completion")
        room = self.max_length - len(p_ids)
        if len(c_ids) > room:
            self.stats.completions_truncated += 1
            c_ids = c_ids[:room]
        return {"input_ids": p_ids + c_ids, "labels": [IGNORE_INDEX] * len(p_ids) + c_ids}


def _key(messages: Messages) -> str:
    return json.dumps(messages, sort_keys=True, default=str)


def text_ids(tokenizer: Any, text: str) -> tuple[list[int], int]:
    """``tokenizer(text)["input_ids"]``, special tokens it adds included, and how many of those lead.

    A tokenizer that prepends BOS (Llama, Gemma) gives ``([bos, ...], 1)``; one that adds nothing
    ``([...], 0)``. The count lets truncation keep the sequence start the model was trained with.
    """
    encoded = tokenizer(text, return_special_tokens_mask=True)
    ids, special = list(encoded["input_ids"]), list(encoded["special_tokens_mask"])
    lead = 0
    while lead < len(ids) and special[lead]:
        lead += 1
    return ids, lead


def truncate_left(ids: list[int], limit: int, *, keep: int = 0) -> list[int]:
    """The last ``limit`` tokens of ``ids``, but its first ``keep`` tokens (a BOS) kept in front."""
    if len(ids) <= limit:
        return list(ids)
    if keep <= 0 or keep >= limit:
        return list(ids[-limit:])
    return list(ids[:keep]) + list(ids[len(ids) - (limit - keep):])


def pad(sequences: list[list[int]], value: int, *, left: bool = False) -> list[list[int]]:
    width = max(len(s) for s in sequences)
    if left:
        return [[value] * (width - len(s)) + list(s) for s in sequences]
    return [list(s) + [value] * (width - len(s)) for s in sequences]
