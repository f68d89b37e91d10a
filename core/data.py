"""Datasets: local files -> records (through a registered data format) -> token ids -> batches.

The ``data`` config group names the files, the format and the length limits; the method names the
record kind it consumes. Bundled data lives in ``alignkit/assets/data`` and is addressed in configs
as ``${asset:data/hh_harmless/train.jsonl.gz}``; what a bundled data config says about its own file
(format, held-out file) is written ``${bundled:<asset>,<value for it>,<value for any other file>}``,
so ``data.path=<your file>`` alone reads your file as your file (:func:`bundled_value`).

``data.format: auto`` (the default; null too) infers the format from the rows' fields
(:func:`infer_format`); a run records the inferred name in its ``config.yaml`` (:func:`settle_format`).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .batches import PairBatch, PromptBatch, RankedBatch, TokenBatch, UnpairedBatch, padded_rows
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


def bundled_value(asset: str, value: Any, otherwise: Any, *, _parent_: Any) -> Any:
    """``${bundled:<asset>,<value>,<otherwise>}``: ``value`` while the node's ``path`` is the bundled file
    ``asset``, else ``otherwise``.

    A bundled data config's format, held-out file and name describe its own file only; with
    ``data.path=<your file>`` they give way (format inference, a held-out share of your file), so a
    changed path never keeps a format that cannot read it.
    """
    path = _parent_.get("path") if _parent_ is not None else None
    if path is None:
        return otherwise
    return value if Path(str(path)).expanduser().resolve() == Path(asset_path(asset)).resolve() else otherwise


#: ``data.format`` values that mean: infer it from the rows.
AUTO_FORMATS = ("auto", None, "")
#: Rows read to infer a format.
INFER_ROWS = 16


@dataclass
class DataConfig:
    """The ``data`` config group.

    Attributes:
        name: label for logs.
        path: training data: a local JSONL / JSON / Parquet file or a ``save_to_disk`` folder.
        eval_path: held-out data in the same format; null splits ``eval_fraction`` off ``path``.
        eval_fraction: share of ``path`` held out (seeded, fixed) when ``eval_path`` is null.
        format: a registered data format (``alignkit ls data_formats``), or ``auto`` / null: inferred
            from the fields of the first rows of ``path`` (:func:`infer_format`), logged and written
            into the run's ``config.yaml``.
        columns: renames applied to every row before its format reads it, ``{old: new}``
            (``data.columns={question: prompt, response_j: chosen, response_k: rejected}``).
        max_length: cap on prompt + completion tokens.
        max_prompt_length: cap on prompt tokens.
        truncation: what to do with a prompt over ``max_prompt_length``: ``left`` (keep its end,
            count it) or ``fail``.
        max_examples: use only the first N training rows (null: all).
        eval_examples: use only the first N held-out rows (null: all).
        chat_template: apply the tokenizer's chat template.
        system_prompt: a system message put before every prompt.
        drop_evasive: leave out training records whose target answer (the completion of ``tokens``
            records, the chosen answer of ``pairs``, the best of ``ranked``) is evasive: a refusal, a
            question back to the user, or under 12 words (:func:`alignkit.answer_quality.is_evasive`);
            the count is logged. Held-out records are kept, so held-out metrics compare with a run
            without it.
    """

    name: str = "custom"
    path: Optional[str] = None
    eval_path: Optional[str] = None
    eval_fraction: float = 0.0
    format: Optional[str] = "auto"
    columns: Any = None  # {old: new}; typed Any so that data.columns={...} replaces it whole
    max_length: int = 512
    max_prompt_length: int = 256
    truncation: str = "left"
    max_examples: Optional[int] = None
    eval_examples: Optional[int] = None
    chat_template: bool = True
    system_prompt: Optional[str] = None
    drop_evasive: bool = False


#: Per record kind, the answer a method learns to give (what ``data.drop_evasive`` reads).
TARGET_ANSWER: dict[str, Callable[[dict], Any]] = {
    "tokens": lambda r: r["completion"], "pairs": lambda r: r["chosen"], "ranked": lambda r: r["completions"][0],
}


def answer_text(answer: Any) -> str:
    """The text of an answer: a string, or the assistant messages' contents joined."""
    if isinstance(answer, str):
        return answer
    return "\n".join(str(m.get("content") or "") for m in answer if m.get("role", "assistant") == "assistant")


def drop_evasive(records: list[dict], kind: str, log: Callable[[str], None]) -> list[dict]:
    """``records`` without those whose target answer is evasive (``data.drop_evasive``).

    Raises:
        DataError: a record kind without a target answer (prompts, unpaired), or nothing left.
    """
    from .answer_quality import is_evasive

    if kind not in TARGET_ANSWER:
        raise DataError(f"data.drop_evasive reads the answer a method learns from; '{kind}' records have none "
                        f"(it applies to {', '.join(TARGET_ANSWER)} records)")
    kept = [r for r in records if not is_evasive(answer_text(TARGET_ANSWER[kind](r)))]
    log(f"data.drop_evasive: left out {len(records) - len(kept)} of {len(records)} training records whose answer "
        "is evasive (a refusal, a question back, or under 12 words)")
    if not kept:
        raise DataError("data.drop_evasive left no training record")
    return kept


def is_auto(name: Any) -> bool:
    """Whether a ``data.format`` value asks for inference (``auto``, null)."""
    return name in AUTO_FORMATS


def rename_columns(row: dict, columns: Any, where: str) -> dict:
    """``row`` with its fields renamed per ``data.columns`` (``{old: new}``).

    Raises:
        DataError: a rename onto a field the row already has (naming both).
    """
    if not columns:
        return row
    out = {k: v for k, v in row.items() if k not in columns}
    for old, new in columns.items():
        if old in row:
            if new in out:
                raise DataError(f"{where}: data.columns renames '{old}' to '{new}', but the row already has a "
                                f"'{new}' field; drop one of them from data.columns")
            out[new] = row[old]
    return out


def _columns_of(cfg: Any) -> dict[str, str]:
    """``data.columns`` as ``{old: new}`` (empty when unset).

    Raises:
        ConfigError: not a mapping of field names.
    """
    from omegaconf import OmegaConf

    columns = getattr(cfg, "columns", None) if not hasattr(cfg, "get") else cfg.get("columns")
    if OmegaConf.is_config(columns):
        columns = OmegaConf.to_container(columns, resolve=True)
    if not columns:
        return {}
    if not isinstance(columns, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in columns.items()):
        from .errors import ConfigError

        raise ConfigError(f"data.columns={columns!r}: expected renames of fields, e.g. "
                          "data.columns={question: prompt, response_j: chosen, response_k: rejected}")
    return dict(columns)


def settle_run_format(cfg: Any, log: Callable[[str], None] | None = None) -> None:
    """Settle the ``data.format`` of run config ``cfg`` (:func:`settle_format`) for the record kind its
    method consumes; nothing when it names a format already or has no ``data.path``."""
    data = cfg.get("data")
    if data is None or not is_auto(data.get("format")) or not (data.get("path") or data.get("eval_path")):
        return
    from .plugin_manager import get_manager

    registry = get_manager().registry
    method = cfg.get("method")
    kind = registry.get("methods", method.name, where="method").kind_for(cfg) if method is not None else None
    settle_format(data, registry, kind=kind, log=log)


def _first_rows(path: str, key: str, columns: dict[str, str], n: int) -> list[tuple[str, dict]]:
    rows = list(itertools.islice(read_rows(path, key=key), n))
    if not rows:
        raise DataError(f"{key}={path}: the dataset is empty")
    missing = [old for old in columns if not any(old in row for _, row in rows)]
    if missing:
        raise DataError(f"{rows[0][0]}: data.columns renames {missing} but the rows have no such field (fields: "
                        f"{sorted(rows[0][1])})")
    return [(where, rename_columns(row, columns, where)) for where, row in rows]


def _expects(spec: Any) -> str:
    """``pairwise {chosen, rejected, [prompt, margin, label]}``: required fields, then [optional] ones."""
    optional = [k for k in spec.keys if k not in spec.required]
    fields = list(spec.required) + ([f"[{', '.join(optional)}]"] if optional else [])
    return f"{spec.name} {{{', '.join(fields)}}}" if fields else spec.name


def infer_format(path: str, registry: Registry, *, columns: dict[str, str] | None = None, kind: str | None = None,
                 key: str = "data.path", rows: int = INFER_ROWS) -> Any:
    """The registered data format that reads the first ``rows`` rows of ``path``.

    Every registered format (third-party ones included) whose :meth:`~alignkit.specs.DataFormatSpec.matches`
    accepts each of those rows is a candidate; the one reading the most of their fields
    (:meth:`~alignkit.specs.DataFormatSpec.reads`) wins: ``{"prompt", "chosen", "rejected"}`` is
    ``pairwise``, not ``prompts``. A tie is broken by the record ``kind`` the method needs, when given.

    Args:
        path: the data file or folder.
        registry: the registered formats.
        columns: ``data.columns`` renames, applied first.
        kind: the record kind the method consumes, to break a tie.
        key: the config key (or option) ``path`` came from, for errors.
        rows: how many rows to look at.

    Returns:
        The winning :class:`~alignkit.specs.DataFormatSpec`.

    Raises:
        DataError: one line naming the file, the fields found and the formats that would take
            them: none matches, or several match equally.
    """
    sample = _first_rows(path, key, dict(columns or {}), rows)
    fields = sorted({k for _, row in sample for k in row})
    union = dict.fromkeys(fields)
    specs = [entry.spec for entry in registry.entries("data_formats")]
    candidates = [spec for spec in specs if all(spec.matches(row) for _, row in sample)]
    if not candidates:
        near = [s for s in specs if set(s.required or s.keys) & set(fields)] or specs
        hint = ("; or rename fields with data.columns={" + ", ".join(f"{f}: ..." for f in fields[:3]) + "}")
        raise DataError(f"{sample[0][0]}: no data format reads rows with fields {fields}; formats that take "
                        f"similar rows: {'; '.join(_expects(s) for s in near)}. Pass data.format=<name> "
                        f"(alignkit ls data_formats){hint}")
    best = max(spec.reads(union) for spec in candidates)
    top = [spec for spec in candidates if spec.reads(union) == best]
    if len(top) > 1 and kind is not None:
        top = [spec for spec in top if can_convert(spec.produces, kind)] or top
    if len(top) > 1:
        raise DataError(f"{key}={path}: rows with fields {fields} fit several data formats: "
                        f"{', '.join(s.name for s in top)}; pass data.format=<one of them>")
    return top[0]


def settle_format(cfg: Any, registry: Registry, *, kind: str | None = None,
                  log: Callable[[str], None] | None = None) -> str:
    """The ``data`` node's format name; an ``auto`` one is inferred from ``data.path`` and written back.

    A run calls this before it saves ``config.yaml`` (:func:`alignkit.runfolder.prepare`), so the saved
    (and resumed) config names the format; the inference is logged in one line through ``log``.
    """
    name = cfg.get("format") if hasattr(cfg, "get") else getattr(cfg, "format", None)
    if not is_auto(name):
        return str(name)
    path, key = (cfg.path, "data.path") if cfg.path else (cfg.eval_path, "data.eval_path")
    if not path:
        raise DataError("data.path is not set; pass data.path=<local file or folder>")
    spec = infer_format(str(path), registry, columns=_columns_of(cfg), kind=kind, key=key)
    cfg.format = spec.name
    if log is not None:
        log(f"data: data.format={spec.name} inferred from the fields of {path} ({spec.produces} records; "
            "pass data.format=<name> to choose another)")
    return spec.name


def load_records(cfg: Any, kind: str, registry: Registry, *, path: str | None = None, key: str = "data.path",
                 limit: int | None = None) -> list[dict]:
    """Read a data file and parse every row into a record of ``kind``.

    ``cfg`` is the ``data`` node or anything with its ``format`` (``auto``: inferred from this file,
    :func:`infer_format`) and optional ``columns`` (renames, :func:`rename_columns`).

    Raises:
        DataError: missing file, malformed row (with its file:line, the field and what was expected),
            a format that cannot give ``kind``, or an empty dataset.
    """
    if path is None:
        raise DataError(f"{key} is not set; pass {key}=<local file or folder>")
    columns = _columns_of(cfg)
    name = getattr(cfg, "format", None) if not hasattr(cfg, "get") else cfg.get("format")
    if is_auto(name):
        fmt = infer_format(path, registry, columns=columns, kind=kind, key=key)
    else:
        fmt = registry.get("data_formats", name, where="data.format")
    if not can_convert(fmt.produces, kind):
        raise DataError(
            f"data.format={fmt.name} gives '{fmt.produces}' records but this method needs '{kind}' records"
        )
    renamed = f"; data.columns renames {columns}" if columns else ""
    records: list[dict] = []
    for where, row in read_rows(path, key=key):
        row = rename_columns(row, columns, where)
        missing = [field for field in fmt.required if field not in row]
        if missing:
            raise DataError(f"{where}: missing field(s) {missing} for data.format={fmt.name} (has {sorted(row)}{renamed})")
        try:
            record = fmt.parse(row)
        except (ValueError, TypeError, KeyError) as exc:
            raise DataError(f"{where}: {exc} (data.format={fmt.name})") from None
        record = convert(record, fmt.produces, kind)
        record["_where"] = where
        records.append(record)
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise DataError(f"{key}={path}: the dataset is empty")
    return records


def split_records(cfg: Any, registry: Registry, kind: str, seed: int, *,
                  log: Callable[[str], None] | None = None) -> tuple[list[dict], list[dict]]:
    """Training and held-out records per the ``data`` config (an ``auto`` format settled first, see
    :func:`settle_format`; ``log`` gets its line, stderr by default)."""
    if log is None:
        from .encoding import report as log
    settle_format(cfg, registry, kind=kind, log=log)
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
    if getattr(cfg, "drop_evasive", False):
        train = drop_evasive(train, kind, log)
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
    # ``columns``: the row's other fields (a reference answer, ...), passed on with every sample of the prompt.
    return {"prompt_ids": enc.prompt_ids(r["prompt"], r["_where"]), "prompt": r["prompt"],
            "columns": dict(r.get("columns") or {})}


def _encode_unpaired(enc: Encoder, r: dict) -> dict:
    out = enc.encode(r["prompt"], r["completion"], r["_where"])
    out["label"] = bool(r["label"])
    return out


ENCODERS: dict[str, Callable[[Encoder, dict], dict]] = {
    "tokens": _encode_tokens, "pairs": _encode_pairs, "ranked": _encode_ranked, "prompts": _encode_prompts,
    "unpaired": _encode_unpaired,
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


def _collate_unpaired(examples: list[dict], pad_id: int) -> UnpairedBatch:
    rows = padded_rows([e["input_ids"] for e in examples], [e["labels"] for e in examples], pad_id)
    return UnpairedBatch(**rows, desirable=torch.tensor([e["label"] for e in examples], dtype=torch.bool))  # (B,)


COLLATORS: dict[str, Callable[[list[dict], int], Any]] = {
    "tokens": _collate_tokens, "pairs": _collate_pairs, "ranked": _collate_ranked, "prompts": _collate_prompts,
    "unpaired": _collate_unpaired,
}


def make_encoder(cfg: Any, tokenizer: Any) -> Encoder:
    return Encoder(tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                   truncation=cfg.truncation, use_chat_template=cfg.chat_template, system_prompt=cfg.system_prompt)


#: How logs and errors name records of each kind.
_NOUNS = {"tokens": "examples", "pairs": "pairs", "ranked": "ranked lists", "prompts": "prompts",
          "unpaired": "unpaired examples"}


def completion_labels(kind: str, example: dict) -> list[list[int]]:
    """The completion token ids of an encoded example (prompt and padding positions left out)."""
    if kind == "pairs":
        rows = [example["chosen_labels"], example["rejected_labels"]]
    elif kind == "ranked":
        rows = list(example["labels"])
    elif kind in ("tokens", "unpaired"):
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


#: Records whose conversations an encoder tokenizes in one batch (:meth:`alignkit.tokenize.Encoder.warm`).
_WARM_CHUNK = 256


def conversations(kind: str, record: dict) -> list[tuple[Any, Any]]:
    """``[(prompt, completion)]`` a record of ``kind`` is encoded from (completion None for prompts)."""
    if kind == "pairs":
        return [(record["prompt"], record["chosen"]), (record["prompt"], record["rejected"])]
    if kind == "ranked":
        return [(record["prompt"], c) for c in record["completions"]]
    if kind in ("tokens", "unpaired"):
        return [(record["prompt"], record["completion"])]
    return [(record["prompt"], None)]


def encode_records(records: list[dict], kind: str, encoder: Encoder, *, split: str = "training") -> list[dict]:
    """Token ids of every record, without those that truncation left with nothing to learn.

    Dropped records (see :func:`drop_reason`) are counted per reason in ``encoder.stats.dropped``,
    which the rollouts log beside the truncation counts.

    Args:
        records: parsed records of ``kind``.
        kind: tokens | pairs | ranked | prompts | unpaired.
        encoder: the run's :class:`~alignkit.tokenize.Encoder` (its stats accumulate).
        split: ``training`` or ``held-out``, for the error.

    Raises:
        DataError: every record was dropped (naming ``data.max_length`` / ``data.max_prompt_length``).
    """
    kept: list[dict] = []
    dropped: dict[str, int] = {}
    warm = getattr(encoder, "warm", None)
    for start in range(0, len(records), _WARM_CHUNK):
        chunk = records[start:start + _WARM_CHUNK]
        if warm is not None:  # the chunk's conversations tokenized in two batched calls
            warm(item for record in chunk for item in conversations(kind, record))
        for record in chunk:
            example = ENCODERS[kind](encoder, record)
            reason = drop_reason(kind, example)
            if reason is None:
                kept.append(example)
            else:
                dropped[reason] = dropped.get(reason, 0) + 1
    if warm is not None:
        encoder.forget()
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
