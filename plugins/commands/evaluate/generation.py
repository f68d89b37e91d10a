"""Answers of a model to a prompt file: batched ``generate`` with the KV cache, greedy or sampled.

Shared by ``alignkit generate`` and ``alignkit eval winrate|elo``. A "model" is anything
``alignkit chat`` accepts (``smollm2``, ``tiny``, a run folder, a checkpoint, a HF folder) or a JSONL
file of answers already generated (rows ``{"prompt": ..., "completion": ...}``, what
``alignkit generate`` writes), so outputs are made once and judged many times.

Prompts are encoded the way the model was trained (its saved :class:`alignkit.encoding.EncodingSettings`:
chat template or plain text, system prompt, prompt length; defaults for a folder without them), and
decoded with exactly the options below through :func:`alignkit.generation.sample`: nothing from the
model's ``generation_config.json``, every answer cut at its first end-of-turn id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import torch

from alignkit.api import (
    Completion,
    DataError,
    EncodingSettings,
    SamplingSettings,
    as_messages,
    end_token_ids,
    get_registry,
    last_user_text,
    load_records,
    private_rng,
    prompt_encoding,
    sample,
    saved_encoding,
)

from .results import atomic_write_text


@dataclass
class GenerationOptions:
    """How answers are decoded.

    Attributes:
        max_new_tokens: cap on answer tokens.
        sample: sample instead of greedy decoding.
        temperature: sampling temperature.
        top_p: nucleus sampling.
        seed: seed of the sampling stream (global RNG state is left untouched).
        batch_size: prompts per ``generate`` call.
        max_prompt_length: prompts keep their last this-many tokens (None: the model's saved
            ``data.max_prompt_length``, else 512; a different explicit value is reported).
        repetition_guard: stop an answer once a passage has come this many times in a row and keep
            its first copy (``alignkit.generation.repetition_cut``; 0 = off): its ``finish_reason`` is
            then ``repetition``, and the command says how many answers were stopped.
    """

    max_new_tokens: int = 128
    sample: bool = False
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    max_prompt_length: Optional[int] = None
    repetition_guard: int = 3

    def settings(self) -> SamplingSettings:
        """The decoding these options ask for (top-k off: nothing else truncates the distribution)."""
        return SamplingSettings(max_new_tokens=self.max_new_tokens, greedy=not self.sample,
                                temperature=self.temperature, top_p=self.top_p, repetition_guard=self.repetition_guard)


DEFAULT_MAX_PROMPT_LENGTH = 512


def read_prompts(path: str, *, data_format: str = "auto", limit: int | None = None) -> list[list[dict]]:
    """Chat-message prompts of a data file, through any registered format that yields prompts."""
    records = load_records(SimpleNamespace(format=data_format), "prompts", get_registry(), path=path,
                           key="--prompts", limit=limit)
    return [r["prompt"] for r in records]


def is_outputs_file(name: str) -> bool:
    """True when a model argument names a JSONL file of answers rather than a model."""
    path = Path(name)
    return path.is_file() and path.name.endswith((".jsonl", ".jsonl.gz", ".json"))


def _prompt_text(value: Any) -> str:
    # An answers row's prompt: the user's text, or a message list (the data formats' other spelling).
    try:
        return last_user_text(as_messages(value, "user", "prompt"))
    except ValueError:
        return str(value)


def read_outputs(path: str, prompts: list[list[dict]]) -> tuple[list[str], list[Optional[str]]]:
    """Answers from a JSONL of ``{"prompt", "completion"}`` rows (and their ``finish_reason`` where written),
    checked against ``prompts`` in order."""
    from alignkit.api import read_rows

    rows = list(read_rows(path, key=path))
    if len(rows) < len(prompts):
        raise DataError(f"{path}: {len(rows)} answers for {len(prompts)} prompts")
    answers, reasons = [], []
    for (where, row), prompt in zip(rows, prompts):
        answer = row.get("completion", row.get("output"))
        if not isinstance(answer, str):
            raise DataError(f"{where}: no 'completion' (or 'output') string")
        if "prompt" in row and _prompt_text(row["prompt"]).strip() != last_user_text(prompt).strip():
            raise DataError(f"{where}: its prompt differs from prompt {len(answers) + 1} of the prompt file "
                            "(answers must follow the prompt file's order)")
        answers.append(answer)
        reasons.append(row.get("finish_reason"))
    return answers, reasons


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, prompts: list[list[dict]], options: GenerationOptions, *,
                     desc: str = "generate", encoding: EncodingSettings | None = None,
                     where: str = "the model") -> list[Completion]:
    """One answer per prompt: left-padded batches, stopped and cut at the first end-of-turn id
    (or by the repetition guard, ``options.repetition_guard``).

    Args:
        model, tokenizer: the model that answers.
        prompts: chat-message prompts.
        options: decoding options.
        desc: progress-bar label.
        encoding: the model's saved encoding settings (None: the defaults, see :func:`prompt_encoding`).
        where: the model, as named in a report of a differing ``max_prompt_length``.
    """
    from tqdm.auto import tqdm

    settings = prompt_encoding(tokenizer, encoding, options.max_prompt_length, default_cap=DEFAULT_MAX_PROMPT_LENGTH,
                               where=where, source=f"--max-prompt-length {options.max_prompt_length}")
    encoder = settings.encoder(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    end_ids = end_token_ids(tokenizer, model)
    model.eval()
    answers: list[Completion] = []
    batches = range(0, len(prompts), options.batch_size)
    with private_rng(options.seed, next(model.parameters()).device):
        for start in tqdm(batches, desc=desc, unit="batch", leave=False, dynamic_ncols=True):
            rows = [encoder.prompt_ids(p) for p in prompts[start:start + options.batch_size]]
            cut = sample(model, rows, options.settings(), end_ids=end_ids, pad_id=pad_id, tokenizer=tokenizer)
            answers += cut
    return answers


def answers_for(name: str, prompts: list[list[dict]], options: GenerationOptions
                ) -> tuple[list[str], list[Optional[str]]]:
    """Answers of ``name`` (a model, a run, a checkpoint, or a JSONL of answers) to ``prompts``,
    encoded the way the model was trained (:func:`alignkit.encoding.saved_encoding`), and each one's
    finish reason (``stop`` | ``length`` | ``repetition``; None where a file of answers does not say)."""
    if is_outputs_file(name):
        return read_outputs(name, prompts)
    from alignkit.api import load_for_inference

    model, tokenizer = load_for_inference(name)
    try:
        cut = generate_answers(model, tokenizer, prompts, options, desc=f"generate {Path(name).name or name}",
                               encoding=saved_encoding(name), where=str(name))
        return [c.text.strip() for c in cut], [c.finish_reason for c in cut]
    finally:
        del model


def repetition_note(reasons: list[Optional[str]], model: str) -> Optional[str]:
    """One line saying how many of ``model``'s answers the repetition guard stopped (None when none)."""
    stopped = sum(1 for r in reasons if r == "repetition")
    if not stopped:
        return None
    return (f"alignkit: {stopped} of {len(reasons)} answers of {model} were stopped when they began repeating "
            "themselves (finish_reason=repetition; --repetition-guard 0 lets them run to --max-new-tokens)")


def write_answers(path: Path, prompts: list[list[dict]], answers: list[str], model: str,
                  finish_reasons: Optional[list[Optional[str]]] = None) -> None:
    """``{"prompt", "messages", "completion", "model", "finish_reason"}`` rows (the reason where known),
    written atomically."""
    reasons = finish_reasons or [None] * len(answers)
    rows = [{"prompt": last_user_text(p), "messages": p, "completion": a, "model": model,
             **({"finish_reason": r} if r else {})} for p, a, r in zip(prompts, answers, reasons)]
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
