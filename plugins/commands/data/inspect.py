"""What a data file reads as: format, record kind, counts, one rendered record, token lengths."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from alignkit.api import (
    BUNDLED_TOKENIZER,
    RECORD_KINDS,
    ConfigError,
    DataConfig,
    Encoder,
    EncodingSettings,
    ModelError,
    can_convert,
    find_model_folder,
    get_registry,
    infer_format,
    load_records,
    read_rows,
    rename_columns,
)

#: Whole records, not capped: inspection measures lengths before training's truncation.
_UNCAPPED = 1 << 30


@dataclass
class InspectOptions:
    """The options of ``alignkit data inspect`` (each mirrors a ``data`` config key).

    Attributes:
        format: a registered data format, or ``auto`` (inferred from the rows' fields).
        columns: field renames ``{old: new}`` (``data.columns``).
        kind: read the records as this kind (default: the kind the format produces).
        model: whose tokenizer and saved encoding settings: ``smollm2`` / ``tiny`` (the bundled
            tokenizer), a run folder, a checkpoint or a Hugging Face folder.
        system_prompt: a system message before every prompt; None: the model's saved one, if any.
        chat_template: apply the chat template; None: the model's saved setting (default: yes).
        max_length: the cap ``data.max_length`` whose excess is counted; None: the saved or default one.
        max_prompt_length: the cap ``data.max_prompt_length``; None: the saved or default one.
        example: which record to render, 1-based.
        limit: read only the first N rows.
    """

    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    kind: str | None = None
    model: str = "smollm2"
    system_prompt: str | None = None
    chat_template: bool | None = None
    max_length: int | None = None
    max_prompt_length: int | None = None
    example: int = 1
    limit: int | None = None


def answers_of(kind: str, record: dict) -> list[tuple[str, list[dict]]]:
    """``[(name, messages)]``: the answers of a record of ``kind`` (none for prompts)."""
    if kind == "pairs":
        return [("chosen", record["chosen"]), ("rejected", record["rejected"])]
    if kind == "ranked":
        return [(f"completions[{i}]", c) for i, c in enumerate(record["completions"])]
    if kind in ("tokens", "unpaired"):
        return [("completion", record["completion"])]
    return []


def load_tokenizer(model: str) -> tuple[Any, EncodingSettings | None, str]:
    """The tokenizer ``model`` names, its saved encoding settings (None if it has none) and a label.

    Raises:
        ModelError: no model folder there, or one without a loadable tokenizer.
    """
    from transformers import AutoTokenizer

    if model in ("smollm2", "tiny"):
        folder, saved = BUNDLED_TOKENIZER, None
    else:
        folder = find_model_folder(model, "--model")
        saved = EncodingSettings.from_folder(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise ModelError(f"--model {model}: no loadable tokenizer in {folder} ({str(exc).splitlines()[0]})") from None
    return tokenizer, saved, (model if model in ("smollm2", "tiny") else str(folder))


def length_summary(values: list[int]) -> str:
    """``min 5  median 7  mean 7.2  p95 11  max 12`` (p95: nearest rank)."""
    ordered = sorted(values)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return (f"min {ordered[0]}  median {statistics.median(ordered):g}  mean {statistics.fmean(ordered):.1f}  "
            f"p95 {p95}  max {ordered[-1]}")


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines() or [""])


def _settings(options: InspectOptions, saved: EncodingSettings | None) -> EncodingSettings:
    defaults = DataConfig()
    base = saved or EncodingSettings(chat_template=defaults.chat_template, system_prompt=defaults.system_prompt,
                                     max_length=defaults.max_length, max_prompt_length=defaults.max_prompt_length)
    given = {"chat_template": options.chat_template, "system_prompt": options.system_prompt,
             "max_length": options.max_length, "max_prompt_length": options.max_prompt_length}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def inspect_data(path: str | Path, options: InspectOptions | None = None) -> str:
    """The inspection report of the data at ``path`` (what ``alignkit data inspect`` prints).

    Raises:
        DataError: the file cannot be read, or its rows fit no format (the same one-line errors as training).
        ConfigError: a bad option.
    """
    options = options or InspectOptions()
    registry = get_registry()
    path = str(path)
    inferred = options.format in ("auto", "", None)
    if inferred:
        spec = infer_format(path, registry, columns=options.columns, kind=options.kind, key="path")
    else:
        spec = registry.get("data_formats", options.format, where="--format")
    kind = options.kind or spec.produces
    if kind not in RECORD_KINDS:
        raise ConfigError(f"--kind {kind}: expected one of {', '.join(RECORD_KINDS)}")
    records = load_records(SimpleNamespace(format=spec.name, columns=options.columns), kind, registry, path=path,
                           key="path", limit=options.limit)
    if not 1 <= options.example <= len(records):
        raise ConfigError(f"--example {options.example}: the data has records 1..{len(records)}")
    tokenizer, saved, label = load_tokenizer(options.model)
    settings = _settings(options, saved)
    encoder = Encoder(tokenizer, max_length=_UNCAPPED, max_prompt_length=_UNCAPPED - 1, truncation="left",
                      use_chat_template=settings.chat_template, system_prompt=settings.system_prompt or None)

    lengths: dict[str, list[int]] = {"prompt": []}
    sequences: list[int] = []
    for record in records:
        prompt = encoder.prompt_ids(record["prompt"], record["_where"])
        lengths["prompt"].append(len(prompt))
        for name, answer in answers_of(kind, record):
            n = len(encoder.completion_ids(record["prompt"], answer))
            lengths.setdefault("completion" if name.startswith("completions[") else name, []).append(n)
            sequences.append(len(prompt) + n)

    how = f"inferred from the fields {', '.join(_first_fields(path, options.columns))}" if inferred else "as given"
    usable = [k for k in RECORD_KINDS if k != kind and can_convert(kind, k)]
    lines = [f"alignkit data inspect: {path}",
             f"  format     {spec.name} ({how}; --format <name> to choose another)",
             f"  records    {len(records)} of kind '{kind}'" + (f" (also usable as: {', '.join(usable)})" if usable else ""),
             ""]
    lines += _render(records[options.example - 1], kind, encoder, tokenizer, options.example, len(records), label,
                     settings.chat_template)
    lines += ["", "  tokens (before truncation)"]
    width = max(len(name) for name in lengths)
    for name, values in lengths.items():
        lines.append(f"    {name.ljust(width)}  {length_summary(values)}")
    if sequences:
        lines.append(f"    {'sequence'.ljust(width)}  {length_summary(sequences)}  (prompt + answer)")
    over_prompt = sum(n > settings.max_prompt_length for n in lengths["prompt"])
    caps = [f"{over_prompt} of {len(lengths['prompt'])} prompts over data.max_prompt_length="
            f"{settings.max_prompt_length} (kept by their end)"]
    if sequences:
        over = sum(n > settings.max_length for n in sequences)
        caps.append(f"{over} of {len(sequences)} sequences over data.max_length={settings.max_length} (answers cut)")
    lines.append("    " + "; ".join(caps))
    return "\n".join(lines)


def _first_fields(path: str, columns: dict[str, str]) -> list[str]:
    """The fields of the data's first row, renamed per ``columns``."""
    where, row = next(iter(read_rows(path, key="path")))
    return sorted(rename_columns(row, columns, where))


def _render(record: dict, kind: str, encoder: Encoder, tokenizer: Any, number: int, total: int, label: str,
            chat_template: bool) -> list[str]:
    """One record as the model reads it: its prompt and each answer, decoded with special tokens."""
    how = f"chat template of {label}" if chat_template else f"plain text, tokenizer of {label}"
    lines = [f"  example {number} of {total} ({record['_where']}), {how}:"]
    prompt_ids = encoder.prompt_ids(record["prompt"], record["_where"])
    lines += [f"  --- prompt ({len(prompt_ids)} tokens) ---",
              _indent(tokenizer.decode(prompt_ids, skip_special_tokens=False))]
    for name, answer in answers_of(kind, record):
        ids = encoder.completion_ids(record["prompt"], answer)
        lines += [f"  --- {name} ({len(ids)} tokens) ---", _indent(tokenizer.decode(ids, skip_special_tokens=False))]
    if kind == "unpaired":
        lines.append(f"  --- label: {'desirable' if record['label'] else 'undesirable'} ---")
    if kind == "pairs" and ("margin" in record or "label" in record):
        lines.append(f"  --- margin {record.get('margin', 0.0):g}, label {record.get('label', 1.0):g} ---")
    if kind == "prompts" and record.get("columns"):
        lines.append(f"  --- columns: {json.dumps(record['columns'], ensure_ascii=False, default=str)} ---")
    return lines
