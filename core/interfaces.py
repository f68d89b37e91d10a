"""The three interfaces every method is built from: rollout -> score -> update.

They are ``Protocol``s, not base classes: any object with the right methods fits. A *batch* is a
plain ``dict`` of tensors (and lists of strings), produced by a rollout and consumed by an objective.

- :class:`Rollout` — where batches come from: a dataset reader (offline methods) or a generator
  sampling completions from the policy (online methods).
- :class:`Scorer` — what completions are worth: ``(batch) -> rewards`` of shape (B,) or (B, A).
- :class:`Objective` — how the policy learns: ``(batch) -> LossOutput``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, runtime_checkable

import torch

Batch = dict[str, Any]


@dataclass
class LossOutput:
    """A scalar loss to back-propagate and the metrics to log with it.

    Attributes:
        loss: scalar tensor (mean over the micro-batch).
        metrics: name -> float or 0-dim tensor; logged as running means per optimizer step.
    """

    loss: torch.Tensor
    metrics: dict[str, float | torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class Rollout(Protocol):
    """Produces the next training batch, possibly by sampling from ``policy``."""

    def next_batch(self, policy: torch.nn.Module) -> Batch: ...

    def eval_batches(self) -> Iterator[Batch]:
        """Held-out batches, in a fixed order, for periodic evaluation."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume at the same position (epoch, offset, RNG)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    # Optional: ``all_batches(split) -> Iterator[Batch]`` yields every example of ``"train"`` or
    # ``"eval"`` once, grouped as training / evaluation will first see them, each batch carrying
    # ``index`` (B,) example indices. Used to precompute per-example values such as reference
    # log-probs.


@runtime_checkable
class Scorer(Protocol):
    """Scores completions: ``(batch) -> rewards`` (B,) or (B, A), float32, finite."""

    def __call__(self, batch: Batch) -> torch.Tensor: ...


@runtime_checkable
class Objective(Protocol):
    """Turns a batch into a loss.

    Optional methods the loop uses when present:

    - ``updates(batch) -> Iterator[Batch]``: the micro-batches to train on for one rollout batch
      (PPO: several epochs of shuffled minibatches). Default: the batch itself, once.
    - ``evaluate(batch) -> dict[str, Tensor]``: per-example held-out values (B,), no gradient.
    - ``summarize(values: dict[str, Tensor]) -> dict[str, float]``: held-out metrics from the
      concatenated per-example values. Default: the mean of each.
    """

    def __call__(self, batch: Batch) -> LossOutput: ...
