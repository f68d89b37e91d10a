"""rollout=dataset: seeded epochs, full batches, length bucketing, exact resume of the position."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from alignkit.plugins.rollouts.dataset.rollout import DatasetRollout, DatasetRolloutConfig


def make_rollout(n: int = 23, batch_size: int = 4, **cfg) -> DatasetRollout:
    rollout = DatasetRollout.__new__(DatasetRollout)  # skip file loading: plan over synthetic examples
    rollout.train = [{"input_ids": [1] * (1 + (7 * i) % 13), "labels": [1] * (1 + (7 * i) % 13)} for i in range(n)]
    rollout.held_out = rollout.train[:5]
    rollout.batch_size, rollout.eval_batch_size, rollout.seed, rollout.pad_id = batch_size, 2, 0, 0
    rollout.cfg = OmegaConf.merge(OmegaConf.structured(DatasetRolloutConfig), cfg)
    from alignkit.data import COLLATORS

    rollout.collate = COLLATORS["tokens"]
    rollout.epoch, rollout.index = 0, 0
    rollout._batches = rollout._plan(0)
    return rollout


def test_epochs_are_seeded_full_and_distinct():
    rollout = make_rollout()
    first = rollout._plan(0)
    assert first == make_rollout()._plan(0)
    assert all(len(b) == 4 for b in first) and len(first) == 5  # 23 // 4 full batches, ragged tail dropped
    flat = [i for b in first for i in b]
    assert len(set(flat)) == len(flat)
    assert rollout._plan(1) != first


def test_bucketing_groups_similar_lengths_and_keeps_every_example_once():
    rollout = make_rollout(n=64, batch_size=4, bucket=True, bucket_window=4)
    plan = rollout._plan(0)
    flat = [i for b in plan for i in b]
    assert sorted(flat) == list(range(64))
    lengths = lambda b: [len(rollout.train[i]["input_ids"]) for i in b]  # noqa: E731
    spread = sum(max(lengths(b)) - min(lengths(b)) for b in plan) / len(plan)
    unbucketed = make_rollout(n=64, batch_size=4)._plan(0)
    assert spread < sum(max(lengths(b)) - min(lengths(b)) for b in unbucketed) / len(unbucketed)


def test_state_dict_resumes_the_same_sequence():
    a = make_rollout()
    for _ in range(7):  # crosses an epoch boundary (5 batches per epoch)
        a.next_batch()
    b = make_rollout()
    b.load_state_dict(a.state_dict())
    for _ in range(6):
        x, y = a.next_batch(), b.next_batch()
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.index, y.index)


def test_all_batches_cover_every_example_in_first_epoch_order():
    rollout = make_rollout()
    batches = list(rollout.all_batches("train"))
    indices = [i for b in batches for i in b.index.tolist()]
    assert sorted(indices) == list(range(23))
    assert [b.index.tolist() for b in batches[:5]] == rollout._plan(0)
    assert [b.index.tolist() for b in rollout.all_batches("eval")] == [[0, 1], [2, 3], [4]]
