"""Atomic checkpoints that resume exactly.

Layout of ``<run>/checkpoints/step-000010/``::

    model/              save_pretrained (safetensors) + tokenizer (+ the objective's save_extras)
    trainer_state.pt    optimizer, scheduler, RNG states, rollout position, step (loaded weights_only)
    manifest.json       step, method, model, sha256 of every file (written last)

A checkpoint is written under a temporary name, flushed to disk, then renamed into place, so a kill
at any moment leaves either the previous checkpoint set or the new one, never half of one. Resume
verifies the manifest's checksums and falls back to the newest intact checkpoint, saying why.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import DISK_FULL, CheckpointError

MANIFEST = "manifest.json"
STATE = "trainer_state.pt"


def as_os_error(exc: BaseException) -> OSError | None:
    """``exc`` as an ``OSError`` if it is a failed write, else None.

    safetensors reports a failed write as ``SafetensorError("... I/O error: File too large (os error 27)")``
    rather than an ``OSError``; its errno is recovered from the message.
    """
    if isinstance(exc, OSError):
        return exc
    found = re.search(r"\(os error (\d+)\)", str(exc))
    if found and type(exc).__name__ == "SafetensorError":
        code = int(found.group(1))
        return OSError(code, os.strerror(code))
    return None


def _write_failed(what: Path, exc: OSError, run_dir: Path | None = None) -> CheckpointError:
    """One line for a failed write (a full disk, a quota, a read-only folder), naming the last intact checkpoint."""
    reason = exc.strerror or str(exc)
    if exc.errno in DISK_FULL:
        reason = f"no room left to write ({reason})"
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    message = f"could not write {what}: {reason}{where}; nothing partial was left behind"
    if run_dir is not None:
        intact = list_checkpoints(run_dir)
        message += f"; the last intact checkpoint is {intact[-1]}" if intact else "; there is no earlier checkpoint"
    return CheckpointError(message)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def with_encoding(cfg: Any, tokenizer: Any, extras: Any = None) -> Callable[[Path], None]:
    """An ``extras`` callback that writes the run's encoding settings, then the objective's extras.

    Every artefact a run saves (``final/``, a checkpoint's ``model/``) thus carries
    :data:`alignkit.encoding.ENCODING_FILE` (chat template, system prompt, lengths, truncation,
    conditioning, tokenizer fingerprint), which scorers, ``eval``, ``chat``, ``generate`` and later
    runs read to encode text the way the model was trained.

    Args:
        cfg: the run config.
        tokenizer: the run's tokenizer (fingerprinted).
        extras: what else goes beside the weights (heads, adapters): ``extras(folder)``, or None.
    """
    from .encoding import EncodingSettings

    settings = EncodingSettings.for_run(cfg, tokenizer)

    def write(folder: Path) -> None:
        settings.save(folder)
        if extras is not None:
            extras(folder)

    return write


def write_model(model: Any, tokenizer: Any, target: Path, extras: Any = None) -> None:
    """``save_pretrained`` into ``target`` atomically (tmp folder + rename).

    ``extras(folder)``, if given, writes more files (an adapter, a reward head) into the temporary
    folder before it is flushed and renamed, so that they appear together with the model or not at all.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700 folders; a saved model should be readable like any other
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if extras is not None:
            extras(tmp)
        _fsync_tree(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        failed = as_os_error(exc)
        if failed is None:
            raise
        raise _write_failed(target, failed) from exc


def save_checkpoint(run_dir: Path, step: int, model: Any, tokenizer: Any, state: dict[str, Any],
                    meta: dict[str, Any], keep_last: int, extras: Any = None) -> Path:
    """Write ``checkpoints/step-<step>`` atomically and prune to the newest ``keep_last``.

    ``extras(folder)``, if given, writes more files beside the model into ``model/`` (a reward or value
    head: what the objective's ``save_extras`` writes into ``final/``), checksummed like the rest, so
    that a checkpoint's ``model/`` opens like a final model.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:06d}.tmp-", dir=root))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp / "model", safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
        if extras is not None:
            extras(tmp / "model")
        torch.save(state, tmp / STATE)
        files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps({"step": step, **meta, "files": files}, indent=1))
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        failed = as_os_error(exc)
        if failed is None:
            raise
        raise _write_failed(final, failed, run_dir) from exc
    prune(run_dir, keep_last)
    return final


def prune(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (all kept when ``keep_last <= 0``)."""
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def remove_partial_writes(run_dir: Path) -> list[str]:
    """Delete temporary folders a killed process left behind (``.step-*.tmp-*``, ``.final.tmp-*``).

    They are never read (resume only looks at ``step-*`` folders with an intact manifest); removing
    them keeps a resumed run's folder identical to an uninterrupted one. Returns the removed names.
    """
    run_dir = Path(run_dir)
    partial = [*run_dir.glob("checkpoints/.step-*.tmp-*"), *run_dir.glob(".final.tmp-*"), *run_dir.glob(".final.old-*")]
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return sorted(p.name for p in partial)


def verify(checkpoint: Path) -> dict[str, Any]:
    """The manifest of an intact checkpoint; ``CheckpointError`` saying what is wrong otherwise."""
    manifest_path = checkpoint / MANIFEST
    if not manifest_path.exists():
        raise CheckpointError(f"{checkpoint}: no {MANIFEST} (incomplete write)")
    manifest = json.loads(manifest_path.read_text())
    for rel, digest in manifest["files"].items():
        path = checkpoint / rel
        if not path.exists():
            raise CheckpointError(f"{checkpoint}: {rel} is missing")
        if _sha256(path) != digest:
            raise CheckpointError(f"{checkpoint}: {rel} does not match its checksum")
    return manifest


def latest_valid(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint whose checksums match, warning about each damaged one skipped."""
    for checkpoint in reversed(list_checkpoints(run_dir)):
        try:
            return checkpoint, verify(checkpoint)
        except CheckpointError as exc:
            warnings.warn(f"alignkit: skipping damaged checkpoint: {exc}", RuntimeWarning, stacklevel=2)
    return None


def load_state(checkpoint: Path) -> dict[str, Any]:
    """The trainer state, loaded without pickle code execution (``weights_only=True``).

    A file holding anything but tensors, numbers, strings and containers (e.g. a pickled object
    that would run code when loaded) is refused with a ``CheckpointError``; nothing in it runs.
    """
    import pickle

    try:
        return torch.load(checkpoint / STATE, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{checkpoint / STATE}: refused to load: it holds more than plain data "
                              f"({str(exc).splitlines()[0][:120]})") from None
