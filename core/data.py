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

from .batches import PairBatch, PromptBatch, RankedBatch, TokenBatch, padded_rows
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
def _collate_tokens(examples: list[dict], pad_id: int) -> TokenBatch:
    rows = padded_rows([e["input_ids"] for e in examples], [e["labels"] for e in examples], pad_id)
    scores = [e["scores"] for e in examples] if "scores" in examples[0] else None  # per-example {attribute: value}
    return TokenBatch(**rows, scores=scores)


def _collate_pairs(examples: list[dict], pad_id: int) -> PairBatch:
    # Chosen rows first, then rejected rows: one concatenated forward for both.
    seqs = [e["chosen_input_ids"] for e in examples] + [e["rejected_input_ids"] for e in examples]
    labs = [e["chosen_labels"] for e in examples] + [e["rejected_labels"] for e in examples]
    return PairBatch(**padded_rows(seqs, labs, pad_id), num_pairs=len(examples),
                     margin=torch.tensor([e["margin"] for e in examples], dtype=torch.float32),  # (P,)
                     label=torch.tensor([e["label"] for e in examples], dtype=torch.float32))  # (P,)


def _collate_ranked(examples: list[dict], pad_id: int) -> RankedBatch:
    k = max(len(e["input_ids"]) for e in examples)
    seqs = [s for e in examples for s in e["input_ids"]]
    labs = [lab for e in examples for lab in e["labels"]]
    present = torch.zeros(len(examples), k, dtype=torch.bool)  # (L, K)
    for row, e in enumerate(examples):
        present[row, : len(e["input_ids"])] = True
    return RankedBatch(**padded_rows(seqs, labs, pad_id), ranked_mask=present)


def _collate_prompts(examples: list[dict], pad_id: int) -> PromptBatch:
    ids = pad([e["prompt_ids"] for e in examples], pad_id, left=True)  # left padding for generation
    mask = pad([[1] * len(e["prompt_ids"]) for e in examples], 0, left=True)
    return PromptBatch(prompt_input_ids=torch.tensor(ids), prompt_attention_mask=torch.tensor(mask),  # (B, P) each
                       prompts=[e["prompt"] for e in examples])


COLLATORS: dict[str, Callable[[list[dict], int], Any]] = {
    "tokens": _collate_tokens, "pairs": _collate_pairs, "ranked": _collate_ranked, "prompts": _collate_prompts,
}


def make_encoder(cfg: Any, tokenizer: Any) -> Encoder:
    return Encoder(tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                   truncation=cfg.truncation, use_chat_template=cfg.chat_template, system_prompt=cfg.system_prompt)


#: How logs and errors name records of each kind.
_NOUNS = {"tokens": "examples", "pairs": "pairs", "ranked": "ranked lists", "prompts": "prompts"}


def completion_labels(kind: str, example: dict) -> list[list[int]]:
    """The completion token ids of an encoded example (prompt and padding positions left out)."""
    if kind == "pairs":
        rows = [example["chosen_labels"], example["rejected_labels"]]
    elif kind == "ranked":
        rows = list(example["labels"])
    elif kind == "tokens":
        rows = [example["labels"]]
    else:
        return []
    return [[t for t in row if t != IGNORE_INDEX] for row in rows]


def drop_reason(kind: str, example: dict) -> str | None:
    """Why an encoded example cannot teach anything after truncation, or None to keep it.

    ``empty``: a completion lost every token (its prompt filled ``data.max_length``). ``identical``:
    two completions of a pair or ranked list are the same token ids (answers that differ only after
    the cut): their preference is a tie, their gradient zero, and their accuracy rounding noise.
    """
    completions = completion_labels(kind, example)
    if any(not ids for ids in completions):
        return "empty"
    if len({tuple(ids) for ids in completions}) < len(completions):
        return "identical"
    return None


def _drop_label(kind: str, reason: str) -> str:
    noun = _NOUNS.get(kind, "records")
    if reason == "identical":
        return f"{noun} identical after truncation" if kind == "pairs" else \
            f"{noun} with identical completions after truncation"
    return f"{noun} with an empty completion after truncation"


def encode_records(records: list[dict], kind: str, encoder: Encoder, *, split: str = "training") -> list[dict]:
    """Token ids of every record, without those that truncation left with nothing to learn.

    Dropped records (see :func:`drop_reason`) are counted per reason in ``encoder.stats.dropped``,
    which the rollouts log beside the truncation counts.

    Args:
        records: parsed records of ``kind``.
        kind: tokens | pairs | ranked | prompts.
        encoder: the run's :class:`~alignkit.tokenize.Encoder` (its stats accumulate).
        split: ``training`` or ``held-out``, for the error.

    Raises:
        DataError: every record was dropped (naming ``data.max_length`` / ``data.max_prompt_length``).
    """
    kept: list[dict] = []
    dropped: dict[str, int] = {}
    for record in records:
        example = ENCODERS[kind](encoder, record)
        reason = drop_reason(kind, example)
        if reason is None:
            kept.append(example)
        else:
            dropped[reason] = dropped.get(reason, 0) + 1
    for reason, n in dropped.items():
        label = _drop_label(kind, reason)
        encoder.stats.dropped[label] = encoder.stats.dropped.get(label, 0) + n
    if records and not kept:
        reasons = ", ".join(f"{n} {_drop_label(kind, why)}" for why, n in dropped.items())
        raise DataError(
            f"data: all {len(records)} {split} {_NOUNS.get(kind, 'records')} were dropped ({reasons}); raise "
            f"data.max_length={encoder.max_length} or lower data.max_prompt_length={encoder.max_prompt_length} "
            "so that the completions keep the tokens where they differ"
        )
    return kept
