"""Reading raw rows from local files, with the file and row number of every row.

Supported: JSONL (``.jsonl``, ``.jsonl.gz``, ``.ndjson``), JSON (a list of objects, or
``{"data": [...]}``), CSV and TSV (read by ``datasets``), Parquet, Arrow (``.arrow``, as
``datasets`` writes them), folders written by ``datasets.Dataset.save_to_disk`` (a ``DatasetDict``:
its ``train`` split), and a folder of such files (read in sorted order; when the file names carry
splits, as Hub downloads do — ``train-00000-of-00002.parquet``, ``test.jsonl`` — only the ``train``
files). Rows come back as ``(location, dict)`` so every later error can say ``file:line`` (JSONL) or
``file row N`` (0-based, the other files).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import tempfile
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


#: File name endings read_rows understands, and how each is read.
SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".arrow")
TAB = "\t"
#: Split names in the file names of a downloaded dataset folder (``train-00000-of-00001.parquet``).
SPLIT_NAMES = ("train", "validation", "valid", "val", "dev", "test", "eval", "heldout")


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in sorted(SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No ``datasets`` progress bars ("Generating train split") while a file is read."""
    from datasets import utils as hf_tqdm

    was_disabled = hf_tqdm.are_progress_bars_disabled()
    hf_tqdm.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            hf_tqdm.enable_progress_bars()


def _csv_rows(path: Path, key: str, sep: str) -> Iterator[tuple[str, dict]]:
    import datasets

    try:
        # Read into memory through a private cache folder: nothing is left in ~/.cache for a local file.
        # Every cell is text, as written: no type guessing turns an answer "007" into 7 or "1.50" into 1.5.
        with open(path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle, delimiter=sep), [])
        text = datasets.Features({name: datasets.Value("string") for name in header})
        with _quiet_datasets(), tempfile.TemporaryDirectory(prefix="alignkit-csv-") as cache:
            dataset = datasets.Dataset.from_csv(str(path), sep=sep, keep_in_memory=True, cache_dir=cache,
                                                features=text if header else None)
    except Exception as exc:  # noqa: BLE001 - pandas / pyarrow parser errors
        raise DataError(f"{key}={path}: not a readable {'TSV' if sep == TAB else 'CSV'} file "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    yield from _hf_rows(path, dataset)


def _arrow_rows(path: Path, key: str) -> Iterator[tuple[str, dict]]:
    import datasets
    import pyarrow as pa

    try:
        dataset = datasets.Dataset.from_file(str(path))  # the stream format datasets writes
    except Exception:  # noqa: BLE001 - an Arrow IPC *file* (random access) is read by pyarrow itself
        try:
            with pa.memory_map(str(path)) as source:
                table = pa.ipc.open_file(source).read_all()
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{key}={path}: not a readable Arrow file ({str(exc).splitlines()[0]})") from None
        dataset = datasets.Dataset(table)
    yield from _hf_rows(path, dataset)


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _saved_rows(path: Path, key: str) -> Iterator[tuple[str, dict]]:
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


def _split_of(path: Path) -> str | None:
    """The split a data file's name carries (``train-00000-of-00002.parquet`` -> ``train``), or None."""
    stem = path.name.lower()
    for split in SPLIT_NAMES:
        if stem == split or stem.startswith((f"{split}-", f"{split}_", f"{split}.")):
            return split
    return None


def data_files(folder: Path, key: str = "data.path") -> list[Path]:
    """The data files a folder holds, in sorted order; only the ``train`` ones when the names carry splits.

    Raises:
        DataError: no data file in the folder.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and _suffix(p) is not None
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise DataError(f"{key}={folder}: a folder without data files; expected {', '.join(SUFFIXES)} files or a "
                        "datasets save_to_disk folder")
    train = [p for p in files if _split_of(p) == "train"]
    return train or files


def read_rows(path: str | Path, *, key: str = "data.path") -> Iterator[tuple[str, dict]]:
    """Yield ``(location, row)`` for every row of a local data file, ``save_to_disk`` folder or folder of files.

    Args:
        path: the file or folder.
        key: the config key (or option) the path came from, named in errors.

    Raises:
        DataError: no such path, an unknown file type, an unreadable file or a malformed row, naming
            the file and the row.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{key}={path}: no such file or folder")
    if path.is_dir():
        if _is_saved_dataset(path):
            yield from _saved_rows(path, key)
            return
        for file in data_files(path, key):
            yield from read_rows(file, key=key)
        return
    suffix = _suffix(path)
    if suffix in (".jsonl", ".jsonl.gz", ".ndjson"):
        yield from _jsonl_rows(path)
    elif suffix == ".json":
        yield from _json_rows(path)
    elif suffix in (".csv", ".tsv"):
        yield from _csv_rows(path, key, TAB if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        import datasets

        with _quiet_datasets(), tempfile.TemporaryDirectory(prefix="alignkit-parquet-") as cache:
            dataset = datasets.Dataset.from_parquet(str(path), keep_in_memory=True, cache_dir=cache)
        yield from _hf_rows(path, dataset)
    elif suffix == ".arrow":
        yield from _arrow_rows(path, key)
    else:
        raise DataError(f"{key}={path}: unknown file type; expected {', '.join(SUFFIXES)}, a datasets "
                        "save_to_disk folder or a folder of such files")
