"""Length grouping: rows run in groups trimmed to their own width give the padded batch's results."""

from __future__ import annotations

import pytest
import torch

from alignkit import logprobs
from alignkit.logprobs import PolicyModule, length_groups, token_stats
from alignkit.models import load_model


def test_groups_by_hand():
    lengths = [10, 4, 9, 3, 0]
    mask = torch.tensor([[1] * n + [0] * (10 - n) for n in lengths])  # (5, 10), right padded
    groups = length_groups(mask, 0.8)
    # sorted longest first: 10, 9 (>= 8) | 4 | 3 (< 3.2) | the empty row (width 2: one predicted position)
    assert [(g.tolist(), w) for g, w in groups] == [([0, 2], 10), ([1], 4), ([3], 3), ([4], 2)]
    assert length_groups(mask, 0.0) is None
    assert length_groups(torch.ones(3, 6, dtype=torch.long), 0.8) is None  # one group, full width
    left = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])  # generate layout: leading pads stay
    assert [(g.tolist(), w) for g, w in length_groups(left, 0.9)] == [([1], 6), ([0], 5)]


@pytest.fixture
def batch():
    torch.manual_seed(0)
    lengths, width = [17, 5, 12, 9, 16, 3], 17
    ids = torch.randint(3, 500, (len(lengths), width))
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    labels[:, :2] = -100  # prompt tokens
    labels[5] = -100  # a row with nothing to score
    ids[1, 7] = 0  # a pad token id inside an ignored region must not matter
    return ids, mask, labels


@pytest.mark.parametrize("wrapped", [True, False])
def test_grouped_equals_padded_in_value_and_gradient(alignkit_compose, batch, wrapped):
    model, _ = load_model(alignkit_compose().model)
    model.train()
    policy = PolicyModule(model) if wrapped else model
    ids, mask, labels = batch
    results = {}
    for fill in (0.0, 0.8):
        logprobs.set_length_grouping(fill)
        try:
            model.zero_grad(set_to_none=True)
            stats = token_stats(policy, ids, mask, labels, entropy=True, temperature=0.7)
            (stats.sum * torch.arange(1.0, 7.0)).sum().backward()  # per-row upstream weights
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results[fill] = (stats, grads)
        finally:
            logprobs.set_length_grouping(0.0)
    (plain, plain_grads), (grouped, grouped_grads) = results[0.0], results[0.8]
    for field in ("logprobs", "entropy", "sum", "mean"):
        # rtol 1e-6: a sum near -160 has an fp32 spacing of 1.5e-5, below the absolute tolerance alone.
        torch.testing.assert_close(getattr(grouped, field), getattr(plain, field), atol=1e-5, rtol=1e-6, msg=field)
    assert torch.equal(grouped.count, plain.count) and grouped.logprobs.shape == (6, 16)
    assert plain_grads.keys() == grouped_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grouped_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_a_bad_fill_is_one_config_error(alignkit_run):
    from alignkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"trainer.length_grouping=1.5"):
        alignkit_run("method=sft", "trainer.length_grouping=1.5", "trainer.max_steps=1")
