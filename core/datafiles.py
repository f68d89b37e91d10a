"""Reading raw rows from local files, with the file and row number of every row.

Supported: JSONL (``.jsonl``, ``.jsonl.gz``), JSON (a list of objects, or ``{"data": [...]}``),
Parquet, and folders written by ``datasets.Dataset.save_to_disk``. Rows come back as
``(location, dict)`` so every later error can say ``file:line``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterator

from .errors import DataError


def _open_text(path: Path):
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return raw


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    with _open_text(path) as handle:
        for lineno, raw in enumerate(handle, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not valid UTF-8 (byte {exc.start}); re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: malformed JSON line ({exc.msg} at character {exc.pos + 1})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


def _json_rows(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path} row {index}: expected a JSON object, got {type(row).__name__}")
        yield f"{path} row {index}", row


def _hf_rows(path: Path, dataset: Any) -> Iterator[tuple[str, dict]]:
    for index, row in enumerate(dataset):
        yield f"{path} row {index}", dict(row)


def read_rows(path: str | Path, *, key: str = "data.path") -> Iterator[tuple[str, dict]]:
    """Yield ``(location, row)`` for every row of a local data file or ``save_to_disk`` folder.

    Args:
        path: the file or folder.
        key: the config key the path came from, named in errors.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{key}={path}: no such file or folder")
    name = path.name.lower()
    if path.is_dir():
        import datasets

        try:
            dataset = datasets.load_from_disk(str(path))
        except Exception as exc:  # noqa: BLE001 - datasets raises several types here
            raise DataError(f"{key}={path}: not a datasets save_to_disk folder ({str(exc).splitlines()[0]})") from None
        if isinstance(dataset, datasets.DatasetDict):
            if "train" not in dataset:
                raise DataError(f"{key}={path}: a DatasetDict without a 'train' split ({list(dataset)})")
            dataset = dataset["train"]
        yield from _hf_rows(path, dataset)
    elif name.endswith(".jsonl") or name.endswith(".jsonl.gz"):
        yield from _jsonl_rows(path)
    elif name.endswith(".json"):
        yield from _json_rows(path)
    elif name.endswith(".parquet"):
        import datasets

        yield from _hf_rows(path, datasets.Dataset.from_parquet(str(path)))
    else:
        raise DataError(f"{key}={path}: unknown file type; expected .jsonl, .jsonl.gz, .json, .parquet or a save_to_disk folder")
