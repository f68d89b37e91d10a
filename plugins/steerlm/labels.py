"""Attribute values from a function of the answer: e.g. verbosity from its length, binned by quantiles.

With L = max_value − min_value + 1 levels, the thresholds are the k/L quantiles (k = 1 … L−1, linear
interpolation between order statistics, as ``numpy.quantile``) of the measured values over the dataset,
and a value x gets the level::

    level(x) = min_value + #{k : x > q_k}

so each level holds about 1/L of the rows (quintiles for the default 0–4 range). Thresholds can be
given instead of computed, to label held-out data on the training data's scale.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .attributes import AttributeSchema

Record = dict


def word_count(record: Record) -> float:
    """Words of the answer (whitespace-separated pieces of the completion's text)."""
    return float(sum(len(m["content"].split()) for m in record["completion"]))


def char_count(record: Record) -> float:
    """Characters of the answer's text."""
    return float(sum(len(m["content"]) for m in record["completion"]))


MEASURES: dict[str, Callable[[Record], float]] = {"words": word_count, "chars": char_count}


def quantile_thresholds(values: Sequence[float], levels: int) -> list[float]:
    """The k/levels quantiles, k = 1 … levels−1 (linear interpolation)."""
    if levels < 2:
        raise ValueError(f"need at least 2 levels, got {levels}")
    if len(values) < 2:
        raise ValueError(f"need at least 2 values to compute quantiles, got {len(values)}")
    data = torch.tensor(list(values), dtype=torch.float64)  # (N,)
    q = torch.arange(1, levels, dtype=torch.float64) / levels  # (L-1,)
    return [float(t) for t in torch.quantile(data, q)]


def level_of(value: float, thresholds: Sequence[float], min_value: int = 0) -> int:
    """``min_value`` plus the number of thresholds ``value`` is above."""
    return min_value + sum(1 for t in thresholds if value > t)


def quantile_levels(values: Sequence[float], schema: AttributeSchema,
                    thresholds: Sequence[float] | None = None) -> tuple[list[int], list[float]]:
    """Each value's level on the schema's range, and the thresholds used (computed when not given)."""
    levels = schema.max_value - schema.min_value + 1
    if thresholds is None:
        thresholds = quantile_thresholds(values, levels)
    elif len(thresholds) != levels - 1:
        raise ValueError(f"{len(thresholds)} thresholds given; the range [{schema.min_value}, {schema.max_value}] "
                         f"needs {levels - 1}")
    thresholds = [float(t) for t in thresholds]
    if any(b < a for a, b in zip(thresholds, thresholds[1:])):
        raise ValueError(f"thresholds {thresholds} are not ascending")
    return [level_of(v, thresholds, schema.min_value) for v in values], thresholds
