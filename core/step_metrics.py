"""An optimizer step's logged metrics, combined over its micro-batches and processes.

Each name a micro-batch's :class:`~alignkit.interfaces.LossOutput` reports is combined by its type:

- a plain float or 0-dim tensor is a mean over the loss's (first term's) units: each micro-batch is
  weighted by its share of them, ``Σ_m share_m · value_m`` (the loss terms themselves are logged so);
- :class:`~alignkit.interfaces.Mean` ``(value, count)``: ``Σ value·count / Σ count`` over every
  micro-batch of every process — the same figure whatever the split;
- :class:`~alignkit.interfaces.Max` / :class:`~alignkit.interfaces.Min`: the extreme over all of them;
- :class:`~alignkit.interfaces.Sum`: the total over all of them (a count).

So ``score`` (a mean over completions) is logged as the mean over the step's completions even when
the loss is weighted by tokens, and the largest importance ratio is the step's largest, not a mean
of each micro-batch's largest.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from . import distributed
from .interfaces import Max, Mean, MetricValue, Min, Sum
from .metrics import to_float


class StepMetrics:
    """Accumulates one optimizer step's metrics (see the module docstring).

    Args:
        processes: the number of processes (a share-weighted value is each process's part of the sum).
    """

    def __init__(self, processes: int = 1) -> None:
        self.scale = 1.0 / processes
        self.weighted: dict[str, float] = {}           # name -> Σ scale · share · value
        self.totals: dict[str, list[float]] = {}       # name -> [Σ value · count, Σ count]
        self.largest: dict[str, float] = {}
        self.smallest: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, name: str, value: MetricValue, share: float) -> None:
        """One micro-batch's ``value`` of ``name``; ``share`` is its share of the loss's units (``N·u/U``)."""
        if isinstance(value, Mean):
            count = to_float(value.count)
            total = self.totals.setdefault(name, [0.0, 0.0])
            if count > 0:
                total[0] += to_float(value.value) * count
                total[1] += count
        elif isinstance(value, Max):
            self.largest[name] = max(self.largest.get(name, float("-inf")), to_float(value.value))
        elif isinstance(value, Min):
            self.smallest[name] = min(self.smallest.get(name, float("inf")), to_float(value.value))
        elif isinstance(value, Sum):
            self.counts[name] = self.counts.get(name, 0.0) + to_float(value.value)
        else:
            self.weighted[name] = self.weighted.get(name, 0.0) + self.scale * share * to_float(value)

    def result(self, accelerator: Any) -> dict[str, float]:
        """Name -> the step's value, reduced over every process (the same keys on every rank)."""
        sums = {**self.weighted, **self.counts}
        for name, (total, count) in self.totals.items():
            sums[f"{name}\0sum"], sums[f"{name}\0count"] = total, count
        sums = distributed.reduce_metrics(sums, accelerator)
        out = {k: v for k, v in sums.items() if "\0" not in k}
        for name in self.totals:
            count = sums[f"{name}\0count"]
            out[name] = sums[f"{name}\0sum"] / count if count > 0 else 0.0  # no unit anywhere: 0, as masked_mean
        out.update(distributed.reduce_metrics(self.largest, accelerator, op="max"))
        out.update(distributed.reduce_metrics(self.smallest, accelerator, op="min"))
        return out


def metric_float(value: MetricValue) -> float:
    """A micro-batch's metric as a plain number (a :class:`Mean`'s value, an extreme's value)."""
    return to_float(value.value if isinstance(value, (Mean, Max, Min, Sum)) else value)


def token_means(stats: Mapping[str, torch.Tensor], mask: torch.Tensor) -> dict[str, Mean]:
    """Statistics that are means over the True tokens of ``mask`` (N, T), as metrics averaged over the step's tokens."""
    tokens = mask.sum()
    return {name: Mean(value, tokens) for name, value in stats.items()}


def row_means(values: Mapping[str, torch.Tensor]) -> dict[str, Mean]:
    """Per-row values (N,) as their means, metrics averaged over the step's rows (completions, examples)."""
    return {name: Mean(value.detach().float().mean(), value.numel()) for name, value in values.items()}
