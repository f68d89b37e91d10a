"""Answers of a model to a prompt file: batched ``generate`` with the KV cache, greedy or sampled.

Shared by ``alignkit generate`` and ``alignkit eval winrate|elo``. A "model" is anything
``alignkit chat`` accepts (``smollm2``, ``tiny``, a run folder, a checkpoint, a HF folder) or a JSONL
file of answers already generated (rows ``{"prompt": ..., "completion": ...}``, what
``alignkit generate`` writes), so outputs are made once and judged many times.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from alignkit.data import load_records
from alignkit.errors import DataError
from alignkit.plugin_manager import get_registry
from alignkit.plugins.generate.layout import completion_end, last_user_text
from alignkit.records import as_messages
from alignkit.tokenize import Encoder

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
        max_prompt_length: prompts keep their last this-many tokens.
    """

    max_new_tokens: int = 128
    sample: bool = False
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    max_prompt_length: int = 512


def read_prompts(path: str, *, data_format: str = "prompts", limit: int | None = None) -> list[list[dict]]:
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


def read_outputs(path: str, prompts: list[list[dict]]) -> list[str]:
    """Answers from a JSONL of ``{"prompt", "completion"}`` rows, checked against ``prompts`` in order."""
    from alignkit.datafiles import read_rows

    rows = list(read_rows(path, key=path))
    if len(rows) < len(prompts):
        raise DataError(f"{path}: {len(rows)} answers for {len(prompts)} prompts")
    answers = []
    for (where, row), prompt in zip(rows, prompts):
        answer = row.get("completion", row.get("output"))
        if not isinstance(answer, str):
            raise DataError(f"{where}: no 'completion' (or 'output') string")
        if "prompt" in row and _prompt_text(row["prompt"]).strip() != last_user_text(prompt).strip():
            raise DataError(f"{where}: its prompt differs from prompt {len(answers) + 1} of the prompt file "
                            "(answers must follow the prompt file's order)")
        answers.append(answer)
    return answers


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, prompts: list[list[dict]], options: GenerationOptions, *,
                     desc: str = "generate") -> list[str]:
    """One answer per prompt (chat template applied, left-padded batches, stops at EOS)."""
    from tqdm.auto import tqdm

    encoder = Encoder(tokenizer, max_length=options.max_prompt_length + 1, max_prompt_length=options.max_prompt_length,
                      use_chat_template=bool(getattr(tokenizer, "chat_template", None)))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = {tokenizer.eos_token_id}
    device = next(model.parameters()).device
    settings: dict[str, Any] = {"max_new_tokens": options.max_new_tokens, "pad_token_id": pad_id,
                                "eos_token_id": sorted(eos), "use_cache": True, "do_sample": options.sample}
    if options.sample:
        settings.update(temperature=options.temperature, top_p=options.top_p, top_k=0)
    from transformers import GenerationConfig

    config = GenerationConfig(**settings)
    model.eval()
    answers: list[str] = []
    batches = range(0, len(prompts), options.batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        for start in tqdm(batches, desc=desc, unit="batch", leave=False, dynamic_ncols=True):
            rows = [encoder.prompt_ids(p) for p in prompts[start:start + options.batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)  # (b, P)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)  # (b, P)
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)  # (b, P + new)
            for tokens in out[:, width:].tolist():
                length, _ = completion_end(tokens, eos, [], tokenizer)
                answers.append(tokenizer.decode(tokens[:length], skip_special_tokens=True).strip())
    return answers


def answers_for(name: str, prompts: list[list[dict]], options: GenerationOptions) -> list[str]:
    """Answers of ``name`` (a model, a run, a checkpoint, or a JSONL of answers) to ``prompts``."""
    if is_outputs_file(name):
        return read_outputs(name, prompts)
    from alignkit.chat import load_for_chat

    model, tokenizer = load_for_chat(name)
    try:
        return generate_answers(model, tokenizer, prompts, options, desc=f"generate {Path(name).name or name}")
    finally:
        del model


def write_answers(path: Path, prompts: list[list[dict]], answers: list[str], model: str) -> None:
    """``{"prompt", "messages", "completion", "model"}`` rows, written atomically."""
    rows = [{"prompt": last_user_text(p), "messages": p, "completion": a, "model": model}
            for p, a in zip(prompts, answers)]
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
