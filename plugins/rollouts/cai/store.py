"""A resumable, atomically finished JSONL file for generated data.

Rows are appended to ``<out>.partial`` one whole batch at a time (flushed and fsynced); the finished
file is renamed to ``<out>`` in one step, so ``<out>`` is never half-written. A sidecar
``<out>.meta.json`` holds the settings' fingerprint: re-running with the same settings continues
where the last run stopped (a torn last line and an unfinished batch are dropped and regenerated),
with different settings it refuses instead of mixing two datasets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from alignkit.api import ConfigError, DataError


def _write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)


class ResumableJsonl:
    """``<out>``: finished rows; ``<out>.partial``: rows so far; ``<out>.meta.json``: settings.

    Args:
        path: the finished file.
        settings: everything that decides the rows (JSON-serialisable); compared on resume.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any]) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.meta_path = self.path.with_name(self.path.name + ".meta.json")
        self.settings = json.loads(json.dumps(settings, sort_keys=True))

    def _check_meta(self) -> dict | None:
        if not self.meta_path.exists():
            if self.path.exists() or self.partial.exists():
                raise ConfigError(f"{self.path}: exists without {self.meta_path.name}; delete it or pick another output")
            return None
        meta = json.loads(self.meta_path.read_text())
        if meta.get("settings") != self.settings:
            changed = sorted(k for k in set(meta.get("settings", {})) | set(self.settings)
                             if meta.get("settings", {}).get(k) != self.settings.get(k))
            raise ConfigError(f"{self.path}: was generated with other settings (differs in {changed}); "
                              "delete it (and its .partial / .meta.json) or pick another output")
        return meta

    def finished(self) -> list[dict] | None:
        """The rows of a finished file with these settings, or None."""
        meta = self._check_meta()
        if meta and meta.get("complete") and self.path.exists():
            return read_jsonl(self.path)
        return None

    def resume(self, batch_size: int, total: int) -> list[dict]:
        """Rows kept from an unfinished run (whole batches only); the partial file is cut to them."""
        meta = self._check_meta()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if meta is None:
            _write_json_atomic(self.meta_path, {"settings": self.settings, "complete": False})
        rows: list[dict] = []
        if self.partial.exists():
            for line in self.partial.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line: the batch it belongs to is regenerated
            keep = len(rows) if len(rows) >= total else (len(rows) // batch_size) * batch_size
            rows = rows[:keep]
        self._rewrite(rows)
        return rows

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.partial.with_name(f".{self.partial.name}.tmp")
        with open(tmp, "w") as handle:
            handle.write("".join(json.dumps(r) + "\n" for r in rows))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.partial)

    def append(self, rows: Iterable[dict]) -> None:
        with open(self.partial, "a") as handle:
            handle.write("".join(json.dumps(r) + "\n" for r in rows))
            handle.flush()
            os.fsync(handle.fileno())

    def finish(self) -> None:
        os.replace(self.partial, self.path)
        _write_json_atomic(self.meta_path, {"settings": self.settings, "complete": True})


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return rows


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
    return path
