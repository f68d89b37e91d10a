"""Datasets: local files -> records (through a registered data format) -> token ids -> batches.

The ``data`` config group names the files, the format and the length limits; the method names the
record kind it consumes. Bundled data lives in ``alignkit/assets/data`` and is addressed in configs
as ``${asset:data/hh_harmless/train.jsonl.gz}``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .datafiles import read_rows
from .errors import DataError
from .records import can_convert, convert
from .registry import Registry
from .tokenize import IGNORE_INDEX, Encoder, pad

ASSETS = Path(__file__).parent / "assets"


def asset_path(relative: str) -> str:
    """Absolute path of a file bundled with alignkit (the ``${asset:...}`` config resolver)."""
    path = ASSETS / relative
    if not path.exists():
        raise DataError(f"bundled asset {relative!r} is missing from {ASSETS}")
    return str(path)


@dataclass
class DataConfig:
    """The ``data`` config group.

    Attributes:
        name: label for logs.
        path: training data: a local JSONL / JSON / Parquet file or a ``save_to_disk`` folder.
        eval_path: held-out data in the same format; null splits ``eval_fraction`` off ``path``.
        eval_fraction: share of ``path`` held out (seeded, fixed) when ``eval_path`` is null.
        format: a registered data format (``alignkit ls data_formats``).
        max_length: cap on prompt + completion tokens.
        max_prompt_length: cap on prompt tokens.
        truncation: what to do with a prompt over ``max_prompt_length``: ``left`` (keep its end,
            count it) or ``fail``.
        max_examples: use only the first N training rows (null: all).
        eval_examples: use only the first N held-out rows (null: all).
        chat_template: apply the tokenizer's chat template.
        system_prompt: a system message put before every prompt.
    """

    name: str = "custom"
    path: Optional[str] = None
    eval_path: Optional[str] = None
    eval_fraction: float = 0.0
    format: str = "pairwise"
    max_length: int = 512
    max_prompt_length: int = 256
    truncation: str = "left"
    max_examples: Optional[int] = None
    eval_examples: Optional[int] = None
    chat_template: bool = True
    system_prompt: Optional[str] = None


def load_records(cfg: Any, kind: str, registry: Registry, *, path: str | None = None, key: str = "data.path",
                 limit: int | None = None) -> list[dict]:
    """Read a data file and parse every row into a record of ``kind``.

    Raises:
        DataError: missing file, malformed row (with its file:line), a format that cannot give
            ``kind``, or an empty dataset.
    """
    if path is None:
        raise DataError(f"{key} is not set; pass {key}=<local file or folder>")
    fmt = registry.get("data_formats", cfg.format, where="data.format")
    if not can_convert(fmt.produces, kind):
        raise DataError(
            f"data.format={cfg.format} gives '{fmt.produces}' records but this method needs '{kind}' records"
        )
    records: list[dict] = []
    for where, row in read_rows(path, key=key):
        missing = [field for field in fmt.required if field not in row]
        if missing:
            raise DataError(f"{where}: missing field(s) {missing} for data.format={cfg.format} (has {sorted(row)})")
        try:
            record = fmt.parse(row)
        except (ValueError, TypeError, KeyError) as exc:
            raise DataError(f"{where}: {exc}") from None
        record = convert(record, fmt.produces, kind)
        record["_where"] = where
        records.append(record)
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise DataError(f"{key}={path}: the dataset is empty")
    return records


def split_records(cfg: Any, registry: Registry, kind: str, seed: int) -> tuple[list[dict], list[dict]]:
    """Training and held-out records per the ``data`` config."""
    train = load_records(cfg, kind, registry, path=cfg.path, key="data.path",
                         limit=None if cfg.eval_path or cfg.eval_fraction else cfg.max_examples)
    if cfg.eval_path:
        held_out = load_records(cfg, kind, registry, path=cfg.eval_path, key="data.eval_path", limit=cfg.eval_examples)
    elif cfg.eval_fraction > 0:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_eval = max(1, int(round(len(train) * cfg.eval_fraction)))
        held_out = [train[i] for i in sorted(order[:n_eval])][: cfg.eval_examples]
        train = [train[i] for i in sorted(order[n_eval:])]
    else:
        held_out = []
    if cfg.max_examples is not None:
        train = train[: cfg.max_examples]
    return train, held_out


def condition_records(records: list[dict], cfg: Any, registry: Registry) -> int:
    """Write each record's ``attributes`` into its prompt with the method's ``condition`` (in place).

    Records without ``attributes``, or methods without a ``condition`` (see
    :class:`alignkit.specs.MethodSpec`), are left as they are. Returns how many records were conditioned.

    Raises:
        DataError: a value the method rejects, with the record's file:line.
    """
    condition = getattr(registry.get("methods", cfg.method.name, where="method"), "condition", None)
    if condition is None:
        return 0
    done = 0
    for record in records:
        values = record.get("attributes")
        if values is None or "prompt" not in record:
            continue
        try:
            record["prompt"] = condition(cfg, record["prompt"], values, fill_defaults=False)
        except ValueError as exc:
            raise DataError(f"{record.get('_where', 'record')}: {exc}") from None
        done += 1
    return done


# ----------------------------------------------------------------------------- tokenization
def _encode_tokens(enc: Encoder, r: dict) -> dict:
    out = enc.encode(r["prompt"], r["completion"], r["_where"])
    if "scores" in r:
        out["scores"] = r["scores"]
    return out


def _encode_pairs(enc: Encoder, r: dict) -> dict:
    chosen = enc.encode(r["prompt"], r["chosen"], r["_where"])
    rejected = enc.encode(r["prompt"], r["rejected"], r["_where"])
    out = {"chosen_input_ids": chosen["input_ids"], "chosen_labels": chosen["labels"],
           "rejected_input_ids": rejected["input_ids"], "rejected_labels": rejected["labels"],
           "margin": float(r.get("margin", 0.0)), "label": float(r.get("label", 1.0))}
    return out


def _encode_ranked(enc: Encoder, r: dict) -> dict:
    encoded = [enc.encode(r["prompt"], c, r["_where"]) for c in r["completions"]]
    return {"input_ids": [e["input_ids"] for e in encoded], "labels": [e["labels"] for e in encoded]}


def _encode_prompts(enc: Encoder, r: dict) -> dict:
    return {"prompt_ids": enc.prompt_ids(r["prompt"], r["_where"]), "prompt": r["prompt"]}


ENCODERS: dict[str, Callable[[Encoder, dict], dict]] = {
    "tokens": _encode_tokens, "pairs": _encode_pairs, "ranked": _encode_ranked, "prompts": _encode_prompts,
}


def length_of(example: dict) -> int:
    """Token count that decides padding cost (for length bucketing)."""
    for key in ("input_ids", "chosen_input_ids", "prompt_ids"):
        if key in example:
            value = example[key]
            if key == "chosen_input_ids":
                return max(len(value), len(example["rejected_input_ids"]))
            if value and isinstance(value[0], list):
                return max(len(v) for v in value)
            return len(value)
    return 0


# ----------------------------------------------------------------------------- collation
def _collate_tokens(examples: list[dict], pad_id: int) -> dict:
    ids = pad([e["input_ids"] for e in examples], pad_id)
    labels = pad([e["labels"] for e in examples], IGNORE_INDEX)
    mask = pad([[1] * len(e["input_ids"]) for e in examples], 0)
    batch = {"input_ids": torch.tensor(ids),  # (B, T)
             "attention_mask": torch.tensor(mask),  # (B, T)
             "labels": torch.tensor(labels)}  # (B, T)
    if "scores" in examples[0]:
        batch["scores"] = [e["scores"] for e in examples]  # per-example {attribute: value}
    return batch


def _collate_pairs(examples: list[dict], pad_id: int) -> dict:
    # Chosen rows first, then rejected rows: one concatenated forward for both.
    seqs = [e["chosen_input_ids"] for e in examples] + [e["rejected_input_ids"] for e in examples]
    labs = [e["chosen_labels"] for e in examples] + [e["rejected_labels"] for e in examples]
    batch = _collate_tokens([{"input_ids": s, "labels": l} for s, l in zip(seqs, labs)], pad_id)
    batch["num_pairs"] = len(examples)
    batch["margin"] = torch.tensor([e["margin"] for e in examples], dtype=torch.float32)  # (B,)
    batch["label"] = torch.tensor([e["label"] for e in examples], dtype=torch.float32)  # (B,)
    return batch


def _collate_ranked(examples: list[dict], pad_id: int) -> dict:
    k = max(len(e["input_ids"]) for e in examples)
    flat = [{"input_ids": s, "labels": l} for e in examples for s, l in zip(e["input_ids"], e["labels"])]
    batch = _collate_tokens(flat, pad_id)
    present = torch.zeros(len(examples), k, dtype=torch.bool)  # (B, K)
    for row, e in enumerate(examples):
        present[row, : len(e["input_ids"])] = True
    batch["ranked_mask"] = present
    return batch


def _collate_prompts(examples: list[dict], pad_id: int) -> dict:
    ids = pad([e["prompt_ids"] for e in examples], pad_id, left=True)  # left padding for generation
    mask = pad([[1] * len(e["prompt_ids"]) for e in examples], 0, left=True)
    return {"prompt_input_ids": torch.tensor(ids), "prompt_attention_mask": torch.tensor(mask),
            "prompts": [e["prompt"] for e in examples]}


COLLATORS: dict[str, Callable[[list[dict], int], dict]] = {
    "tokens": _collate_tokens, "pairs": _collate_pairs, "ranked": _collate_ranked, "prompts": _collate_prompts,
}


def make_encoder(cfg: Any, tokenizer: Any) -> Encoder:
    return Encoder(tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                   truncation=cfg.truncation, use_chat_template=cfg.chat_template, system_prompt=cfg.system_prompt)


def encode_records(records: list[dict], kind: str, encoder: Encoder) -> list[dict]:
    return [ENCODERS[kind](encoder, r) for r in records]
