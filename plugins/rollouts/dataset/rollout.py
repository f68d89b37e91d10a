"""``rollout=dataset``: batches read from the ``data`` config in a seeded, resumable order."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from alignkit.api import (
    COLLATORS,
    RunContext,
    condition_records,
    encode_records,
    length_of,
    make_encoder,
    report_start_model,
    shard,
    split_records,
)


@dataclass
class DatasetRolloutConfig:
    """The ``rollout=dataset`` options.

    Attributes:
        name: ``dataset``.
        shuffle: reshuffle every epoch (seeded by ``trainer.seed`` and the epoch number).
        bucket: length bucketing: sort each window of ``bucket_window`` batches by length so a batch
            holds similar lengths (less padding), then shuffle the batch order.
    """

    name: str = "dataset"
    shuffle: bool = True
    bucket: bool = False
    bucket_window: int = 16


class DatasetRollout:
    """Reads records of the method's kind, tokenizes them once, and serves collated batches.

    The position (epoch, batch index) is the whole state: resuming replays the same order.
    """

    def __init__(self, ctx: RunContext, cfg: Any) -> None:
        data_cfg, tcfg = ctx.cfg.data, ctx.cfg.trainer
        train_records, eval_records = split_records(data_cfg, ctx.registry, ctx.kind, tcfg.seed)
        conditioned = condition_records(train_records + eval_records, ctx.cfg, ctx.registry)
        if conditioned:
            ctx.log(f"data: {conditioned} records conditioned on their attributes by method={ctx.cfg.method.name}")
        encoder = make_encoder(data_cfg, ctx.tokenizer)
        report_start_model(ctx)  # a model.path trained on text encoded otherwise is reported in one line
        self.train = encode_records(train_records, ctx.kind, encoder)
        self.held_out = encode_records(eval_records, ctx.kind, encoder, split="held-out")
        ctx.log(f"data: {len(self.train)} training and {len(self.held_out)} held-out {ctx.kind} records "
                f"from {data_cfg.name}; {encoder.stats.describe()}")
        self.collate = COLLATORS[ctx.kind]
        self.pad_id = ctx.tokenizer.pad_token_id
        self.batch_size = tcfg.batch_size
        self.eval_batch_size = tcfg.eval_batch_size
        self.seed = tcfg.seed
        self.accelerator = getattr(ctx, "accelerator", None)
        self.cfg = cfg
        if len(self.train) < self.batch_size:
            from alignkit.api import DataError

            raise DataError(f"data.path: {len(self.train)} training records, fewer than trainer.batch_size={self.batch_size}")
        self.epoch, self.index = 0, 0
        self._batches = self._plan(self.epoch)

    def _plan(self, epoch: int) -> list[list[int]]:
        """The batches of one epoch, as lists of example indices."""
        n = len(self.train)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator).tolist() if self.cfg.shuffle else list(range(n))
        usable = n - n % self.batch_size  # drop the ragged tail: every step sees a full batch
        order = order[:usable]
        if self.cfg.bucket:
            window = self.batch_size * self.cfg.bucket_window
            order = [i for start in range(0, usable, window)
                     for i in sorted(order[start:start + window], key=lambda i: length_of(self.train[i]))]
        batches = [order[i:i + self.batch_size] for i in range(0, usable, self.batch_size)]
        if self.cfg.bucket and self.cfg.shuffle:
            perm = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in perm]
        return batches

    def _batch(self, examples: list[dict], indices: list[int]) -> Any:
        batch = self.collate([examples[i] for i in indices], self.pad_id)
        return dataclasses.replace(batch, index=torch.tensor(indices))  # (B,) positions in the train / held-out list

    def next_batch(self, policy: Any = None) -> Any:
        if self.index >= len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = self._plan(self.epoch)
        # Every process plans the same global batch and trains on its own slice of it.
        batch = self._batch(self.train, shard(self._batches[self.index], getattr(self, "accelerator", None)))
        self.index += 1
        return batch

    def _eval_plan(self) -> list[list[int]]:
        n, size = len(self.held_out), self.eval_batch_size
        return [list(range(start, min(start + size, n))) for start in range(0, n, size)]

    def eval_batches(self) -> Iterator[Any]:
        for indices in self._eval_plan():
            yield self._batch(self.held_out, indices)

    def all_batches(self, split: str) -> Iterator[Any]:
        """Every example of ``train`` or ``eval`` once, grouped as the first epoch / evaluation sees them.

        The grouping matters for exactness: a value precomputed here (a reference log-prob) comes from
        the very same padded batch the training step will use in the first epoch.
        """
        if split == "eval":
            yield from self.eval_batches()
            return
        planned = self._plan(0)
        seen = {i for batch in planned for i in batch}
        tail = [i for i in range(len(self.train)) if i not in seen]  # the ragged tail, dropped this epoch
        for indices in planned + [tail[i:i + self.batch_size] for i in range(0, len(tail), self.batch_size)]:
            yield self._batch(self.train, indices)

    def num_examples(self, split: str) -> int:
        """How many examples ``train`` or ``eval`` holds (:class:`alignkit.interfaces.ListsExamples`)."""
        return len(self.held_out if split == "eval" else self.train)

    def __len__(self) -> int:
        return len(self.train)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._batches = self._plan(self.epoch)


def build(ctx: RunContext, cfg: Any) -> DatasetRollout:
    """Batches from the ``data`` config, seeded and resumable (offline methods)."""
    return DatasetRollout(ctx, cfg)
