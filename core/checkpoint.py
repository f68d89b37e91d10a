"""Atomic checkpoints that resume exactly.

Layout of ``<run>/checkpoints/step-000010/``::

    model/              save_pretrained (safetensors) + tokenizer
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
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError

MANIFEST = "manifest.json"
STATE = "trainer_state.pt"


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


def write_model(model: Any, tokenizer: Any, target: Path) -> None:
    """``save_pretrained`` into ``target`` atomically (tmp folder + rename)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700 folders; a saved model should be readable like any other
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _fsync_tree(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(run_dir: Path, step: int, model: Any, tokenizer: Any, state: dict[str, Any],
                    meta: dict[str, Any], keep_last: int) -> Path:
    """Write ``checkpoints/step-<step>`` atomically and prune to the newest ``keep_last``."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:06d}.tmp-", dir=root))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp / "model", safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
        torch.save(state, tmp / STATE)
        files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps({"step": step, **meta, "files": files}, indent=1))
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


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
    """The trainer state, loaded without pickle code execution (``weights_only=True``)."""
    return torch.load(checkpoint / STATE, weights_only=True, map_location="cpu")
