"""What every scorer promises: one finite float per completion (or A per completion), or an error naming it."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from typing import Any, Callable, Iterator

import torch

from .errors import TrainingError


def checked_rewards(rewards: Any, batch: Any, scorer_name: str) -> torch.Tensor:
    """The scorer's output as float32 (B,) or (B, A); TrainingError for a wrong length or a non-finite value."""
    if not isinstance(rewards, torch.Tensor):
        rewards = torch.as_tensor(rewards, dtype=torch.float32)
    expected = batch.num_rows
    if rewards.shape[0] != expected:
        raise TrainingError(f"scorer '{scorer_name}' returned {rewards.shape[0]} rewards for {expected} completions")
    if not torch.isfinite(rewards).all():
        raise TrainingError(f"scorer '{scorer_name}' returned a non-finite reward (NaN or inf)")
    return rewards.float()


def as_rewards(values: Any, n: int, who: str) -> torch.Tensor:
    """``values`` as a (n,) float32 tensor, or a one-line ``TrainingError`` naming ``who``.

    Args:
        values: what the scorer returned (list of numbers or tensor).
        n: number of completions scored.
        who: the scorer, as the user configured it (e.g. ``scorer 'function' (fn=mod:f)``).
    """
    try:
        rewards = torch.as_tensor(values, dtype=torch.float32)  # (n,)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TrainingError(f"{who} returned {type(values).__name__}, not a list of numbers: {exc}") from None
    if rewards.dim() == 2 and rewards.shape[1] == 1:
        rewards = rewards[:, 0]
    if rewards.dim() != 1 or rewards.shape[0] != n:
        raise TrainingError(f"{who} returned {tuple(rewards.shape)} rewards for {n} completions; expected one float "
                            "per completion")
    bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
    if bad:
        raise TrainingError(f"{who} returned a non-finite reward ({float(rewards[bad[0]])}) for completion {bad[0]} "
                            f"({len(bad)} of {n} non-finite)")
    return rewards


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`TimeoutError` in the block after ``seconds`` (SIGALRM; the main thread of a Unix
    process only — elsewhere, or with ``seconds`` None, the block runs unlimited)."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Checker:
    """Runs a per-completion check with a time limit, turning failures into reward 0 and counting them.

    A check that raises, or runs past ``timeout_s``, scores 0 (never a crash); the counts and the time
    spent are reported through :meth:`pop_stats` (logged with the training step).

    Args:
        check: ``check(completion, columns, prompt) -> float`` for one completion.
        name: the scorer's name, prefixed to its stats (``scorer/math_errors``).
        timeout_s: the limit per check (None: none).
    """

    def __init__(self, check: Callable[[str, dict[str, Any], str], float], name: str,
                 timeout_s: float | None = None) -> None:
        self.check, self.name, self.timeout_s = check, name, timeout_s
        self.counts = {"errors": 0.0, "timeouts": 0.0, "seconds": 0.0, "checked": 0.0}

    def __call__(self, batch: Any) -> torch.Tensor:
        """(N,) one score per completion of a :class:`~alignkit.batches.RolloutBatch`."""
        scores = []
        columns = batch.columns or [{} for _ in batch.completions]
        for completion, row, prompt in zip(batch.completions, columns, batch.prompt_text):
            start = time.perf_counter()
            try:
                with time_limit(self.timeout_s):
                    value = float(self.check(completion, row, prompt))
            except TimeoutError:
                value, self.counts["timeouts"] = 0.0, self.counts["timeouts"] + 1
            except Exception:  # noqa: BLE001 - a checker that fails scores 0 and is counted, never a crash
                value, self.counts["errors"] = 0.0, self.counts["errors"] + 1
            self.counts["seconds"] += time.perf_counter() - start
            self.counts["checked"] += 1
            scores.append(value if math.isfinite(value) else 0.0)
        return torch.tensor(scores, dtype=torch.float32)  # (N,)

    def pop_stats(self) -> dict[str, float]:
        """Checks since the last call: errors, time-outs, seconds spent, completions checked."""
        stats = {f"scorer/{self.name}_{k}": v for k, v in self.counts.items()}
        self.counts = dict.fromkeys(self.counts, 0.0)
        return stats
