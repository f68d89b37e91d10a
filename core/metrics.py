"""Metrics to ``metrics.jsonl`` (one JSON object a line) and TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch


def to_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean().item())
    return float(value)


class MetricsLogger:
    """Appends ``{"step": ..., "split": ..., <metrics>}`` lines; mirrors them to TensorBoard.

    Args:
        run_dir: the run folder; writes ``metrics.jsonl`` and ``tensorboard/`` there.
        tensorboard: also write TensorBoard event files.
        enabled: False on non-main processes.
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, enabled: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional at run time
                self._tb = None

    def log(self, step: int, metrics: dict[str, Any], split: str = "train") -> dict[str, float]:
        values = {k: to_float(v) for k, v in metrics.items()}
        if not self.enabled:
            return values
        record = {"step": step, "split": split, **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"{split}/{key}", value, step)
            self._tb.flush()
        return values

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
