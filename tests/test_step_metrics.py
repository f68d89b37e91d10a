"""An optimizer step's logged metrics are combined by their declared unit (alignkit.step_metrics)."""

from __future__ import annotations

import pytest
import torch

from alignkit.api import Max, Mean, Min, Sum, row_means, token_means
from alignkit.step_metrics import StepMetrics, metric_float


class OneProcess:
    num_processes = 1


def test_each_kind_combines_as_its_unit_says():
    # Two micro-batches: loss shares 0.25 / 0.75 (1 and 3 tokens), 3 and 1 completions.
    step = StepMetrics()
    step.add("loss", torch.tensor(2.0), 0.25)
    step.add("loss", torch.tensor(4.0), 0.75)
    step.add("score", Mean(torch.tensor(1.0), 3), 0.25)  # 3 completions, all right
    step.add("score", Mean(torch.tensor(0.0), 1), 0.75)  # 1 completion, wrong
    step.add("ratio_max", Max(torch.tensor(1.5)), 0.25)
    step.add("ratio_max", Max(torch.tensor(1.2)), 0.75)
    step.add("ratio_min", Min(0.9), 0.25)
    step.add("ratio_min", Min(0.7), 0.75)
    step.add("tokens", Sum(torch.tensor(1.0)), 0.25)
    step.add("tokens", Sum(3.0), 0.75)
    out = step.result(OneProcess())
    assert out["loss"] == pytest.approx(0.25 * 2.0 + 0.75 * 4.0)  # share-weighted: 3.5
    assert out["score"] == pytest.approx(3 / 4)  # per completion, not 0.25 (token-weighted)
    assert out["ratio_max"] == pytest.approx(1.5) and out["ratio_min"] == pytest.approx(0.7)
    assert out["tokens"] == 4.0


def test_a_mean_over_no_units_adds_nothing_and_is_zero_alone():
    step = StepMetrics()
    step.add("kl", Mean(torch.tensor(5.0), 0), 0.5)  # no tokens here: ignored
    step.add("kl", Mean(torch.tensor(0.5), 2), 0.5)
    step.add("empty", Mean(torch.tensor(3.0), torch.tensor(0)), 1.0)
    out = step.result(OneProcess())
    assert out["kl"] == 0.5 and out["empty"] == 0.0


def test_row_and_token_means_carry_their_counts():
    values = torch.tensor([1.0, 0.0, 1.0])  # (N,)
    (score,) = row_means({"score": values}).values()
    assert metric_float(score) == pytest.approx(2 / 3) and score.count == 3
    mask = torch.tensor([[True, True, False], [True, False, False]])  # (N, T): 3 tokens
    (clip,) = token_means({"clip_frac": torch.tensor(1 / 3)}, mask).values()
    assert float(clip.count) == 3 and metric_float(clip) == pytest.approx(1 / 3)
    assert metric_float(Max(torch.tensor(2.0))) == 2.0 and metric_float(0.5) == 0.5
