"""The batches rollouts produce and objectives consume: typed, documented, with their shapes.

One dataclass per record kind, in the manner of torchtune's ``Trajectory``:

=================  ===========================================================================
:class:`TokenBatch`    sequences with target tokens (SFT examples, scored answers)
:class:`PairBatch`     preference pairs: chosen rows, then rejected rows, one forward for both
:class:`RankedBatch`   ranked lists of completions, flattened list-major
:class:`UnpairedBatch` single answers marked desirable or not (KTO-style unpaired preferences)
:class:`PromptBatch`   prompts alone, left-padded for generation
:class:`RolloutBatch`  completions sampled from the policy, k per prompt, with what scoring and the
                       method's preparation add (rewards, old log-probs, advantages, ...)
=================  ===========================================================================

Sequences are right-padded (``attention_mask`` 0 at the end); ``labels`` are the target token ids,
``-100`` (``IGNORE_INDEX``) on prompt and padding positions. Every batch moves with ``.to(device)``
and gives its sub-batch with ``.select(examples)``: the same examples always give the same tensors
(trailing all-padding columns dropped), so values precomputed on a sub-batch are reproduced exactly by
the update that uses it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from .tokenize import IGNORE_INDEX

B = TypeVar("B", bound="TokenBatch")


def _move(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value


@dataclass
class TokenBatch:
    """Sequences with target tokens.

    Attributes:
        input_ids: (R, T) token ids, right-padded.
        attention_mask: (R, T) 1 on real tokens.
        labels: (R, T) target ids, ``-100`` on prompt and padding.
        index: (E,) indices of the batch's examples in their split (offline data), or None.
        scores: E per-example ``{attribute: value}`` (``data.format=scored``), or None.
        rewards: (R,) or (R, A) the scorer's rewards once the loop has scored the batch (None before,
            and for a run without a scorer).

    R is the number of rows (sequences) and E the number of examples; they are equal here, and differ
    in :class:`PairBatch` (R = 2E) and :class:`RankedBatch`.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor | None = None
    scores: list[dict[str, Any]] | None = None
    rewards: torch.Tensor | None = None

    @property
    def num_rows(self) -> int:
        """R: sequences in the batch."""
        return int(self.input_ids.shape[0])

    @property
    def num_examples(self) -> int:
        """E: examples in the batch (what ``select`` indexes)."""
        return self.num_rows

    def response_mask(self) -> torch.Tensor:
        """(R, T−1) bool: positions whose next token is a target token (aligned with log-probs)."""
        return self.labels[:, 1:] != IGNORE_INDEX  # (R, T-1)

    def prefix_groups(self) -> torch.Tensor | None:
        """(R,) a group id per row where rows repeat a prompt (rows of a group may share a prefix:
        :mod:`alignkit.shared_prefix` reads how much from the tokens), or None when no row repeats one."""
        return None

    def target_tokens(self, rows: slice | torch.Tensor | None = None) -> int:
        """How many target tokens the batch (or ``rows`` of it) holds: the unit of token-mean losses."""
        mask = self.response_mask()
        return int((mask if rows is None else mask[rows]).sum())

    def to(self: B, device: torch.device | str) -> B:
        """The batch with every tensor on ``device``."""
        return dataclasses.replace(self, **{f.name: _move(getattr(self, f.name), device)
                                            for f in dataclasses.fields(self)})

    def with_rewards(self: B, rewards: torch.Tensor) -> B:
        """The batch scored: ``rewards`` (R,) or (R, A)."""
        return dataclasses.replace(self, rewards=rewards)

    def _rows_of(self, examples: torch.Tensor) -> torch.Tensor:
        """(r,) row indices of ``examples``."""
        return examples

    def _per_example(self) -> dict[str, Any]:
        """Fields with one entry per example (besides the per-row sequence tensors)."""
        return {"index": self.index, "scores": self.scores}

    def select(self: B, examples: torch.Tensor | list[int]) -> B:
        """The sub-batch of ``examples`` (indices into this batch's examples), in that order.

        Rows keep their positions (right padding only), and trailing columns that are padding in
        every selected row are dropped; no examples give a batch of no rows (width 1).
        """
        examples = torch.as_tensor(examples, dtype=torch.long)
        rows = self._rows_of(examples)
        lengths = self.attention_mask[rows.to(self.attention_mask.device)].sum(dim=1)  # (r,)
        width = int(lengths.max()) if lengths.numel() else 1
        changes: dict[str, Any] = {}
        for name in ("input_ids", "attention_mask", "labels"):
            value = getattr(self, name)
            changes[name] = value[rows.to(value.device), :width]
        changes["rewards"] = _take(self.rewards, rows)  # one per row
        for name, value in self._per_example().items():
            changes[name] = _take(value, examples)
        changes.update(self._select_more(examples, rows, width))
        return dataclasses.replace(self, **changes)

    def _select_more(self, examples: torch.Tensor, rows: torch.Tensor, width: int) -> dict[str, Any]:
        return {}


def _take(value: Any, indices: torch.Tensor) -> Any:
    if value is None or (isinstance(value, list) and not value):  # a field the batch does not carry
        return value
    if isinstance(value, torch.Tensor):
        return value[indices.to(value.device)]
    return [value[i] for i in indices.tolist()]


@dataclass
class PairBatch(TokenBatch):
    """Preference pairs: rows ``0..P−1`` are the chosen answers, rows ``P..2P−1`` the rejected ones.

    Attributes:
        num_pairs: P.
        margin: (P,) the pair's margin (0 when the data gives none).
        label: (P,) P(chosen is better): 1 for a hard label, below 1 for a soft (AI-feedback) one.
        index: (P,) pair indices in the split.
    """

    num_pairs: int = 0
    margin: torch.Tensor | None = None
    label: torch.Tensor | None = None

    @property
    def num_examples(self) -> int:
        return self.num_pairs

    def prefix_groups(self) -> torch.Tensor:
        """(2P,) the pair index of each row: a pair's chosen and rejected rows share its prompt."""
        return torch.arange(self.num_rows, device=self.input_ids.device) % max(self.num_pairs, 1)

    def chosen(self, values: torch.Tensor) -> torch.Tensor:
        """The chosen rows' part (P, ...) of a per-row tensor (2P, ...)."""
        return values[: self.num_pairs]

    def rejected(self, values: torch.Tensor) -> torch.Tensor:
        """The rejected rows' part (P, ...) of a per-row tensor (2P, ...)."""
        return values[self.num_pairs:]

    def _rows_of(self, examples: torch.Tensor) -> torch.Tensor:
        return torch.cat([examples, examples + self.num_pairs])  # (2p,) chosen rows, then rejected rows

    def _per_example(self) -> dict[str, Any]:
        return {**super()._per_example(), "margin": self.margin, "label": self.label}

    def _select_more(self, examples: torch.Tensor, rows: torch.Tensor, width: int) -> dict[str, Any]:
        return {"num_pairs": int(examples.numel())}


@dataclass
class RankedBatch(TokenBatch):
    """Ranked lists of completions, best first, flattened list-major into rows.

    Attributes:
        ranked_mask: (L, K) True where list l has a k-th completion; rows are the True entries in
            row-major order.
        index: (L,) list indices in the split.
    """

    ranked_mask: torch.Tensor | None = None

    @property
    def num_examples(self) -> int:
        return int(self.ranked_mask.shape[0])

    def prefix_groups(self) -> torch.Tensor:
        """(R,) the list index of each row: a list's completions share its prompt."""
        sizes = self.ranked_mask.long().sum(1)  # (L,)
        return torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes).to(self.input_ids.device)

    def _rows_of(self, examples: torch.Tensor) -> torch.Tensor:
        mask = self.ranked_mask.cpu()
        start = torch.cumsum(mask.long().sum(1), 0) - mask.long().sum(1)  # (L,) first row of each list
        return torch.cat([torch.arange(int(start[e]), int(start[e]) + int(mask[e].sum())) for e in examples.tolist()])

    def _select_more(self, examples: torch.Tensor, rows: torch.Tensor, width: int) -> dict[str, Any]:
        mask = self.ranked_mask[examples.to(self.ranked_mask.device)]
        return {"ranked_mask": mask[:, : int(mask.sum(1).max())]}


@dataclass
class UnpairedBatch(TokenBatch):
    """Unpaired preference data (KTO-style): single answers, each marked desirable or not.

    Attributes:
        desirable: (E,) bool, True for an answer labelled good (``label: true`` in the data).
    """

    desirable: torch.Tensor | None = None

    def _per_example(self) -> dict[str, Any]:
        return {**super()._per_example(), "desirable": self.desirable}


@dataclass
class PromptBatch:
    """Prompts alone, left-padded for generation.

    Attributes:
        prompt_input_ids: (B, P) prompt token ids, left-padded.
        prompt_attention_mask: (B, P) 1 on real tokens.
        prompts: B chat-message lists.
        index: (B,) prompt indices in the split.
    """

    prompt_input_ids: torch.Tensor
    prompt_attention_mask: torch.Tensor
    prompts: list[list[dict[str, str]]]
    index: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "PromptBatch":
        return dataclasses.replace(self, prompt_input_ids=self.prompt_input_ids.to(device),
                                   prompt_attention_mask=self.prompt_attention_mask.to(device))


@dataclass
class RolloutBatch(TokenBatch):
    """Completions sampled from the policy: N = P·k rows, sample-major within a prompt (rows
    ``p·k … p·k + k − 1`` share prompt ``p``).

    Attributes:
        input_ids / attention_mask / labels: (N, T) prompt + completion, right-padded; labels are the
            completion tokens (end-of-turn token included: the policy learns to stop).
        group: (N,) prompt index 0..P−1 within the batch.
        ended: (N,) 1.0 if the completion stopped on its own (end of turn or stop string) before the cap.
        lengths: (N,) tokens of each sampled completion (end-of-turn token included), whether or not the
            loss trains on them (``rollout.mask_truncated`` masks a cut completion's labels, not its
            length); None where the rollout does not record them (:meth:`completion_lengths` counts labels).
        prompts: N chat-message lists (each prompt repeated k times).
        prompt_text: N strings, the last user message of each prompt (what a judge reads).
        completions: N decoded completions (special tokens removed, cut at the end of the turn).
        columns: N dicts, each prompt's other fields from the data (a reference ``answer``, a level, ...),
            what scorers that check answers read; empty dicts when the data has none.
        num_prompts: P.
        k: completions per prompt.
        index: (N,) the prompt index of each row in its split.
        eval_round: which held-out evaluation sampled the batch (None in training).
        sampler_logps: (N, T−1) log π_sampler of each completion token as the inference engine computed it
            when sampling (temperature and truncation applied), aligned with the trainer's log-probs
            (column t holds the log-prob of token t + 1); 0 elsewhere. None when not recorded.
        extras: what the method's preparation adds, each (N, ...) or (N, T−1) per token
            (``old_logps``, ``advantages``, ``returns``, ...); selected with the rows.
    """

    group: torch.Tensor | None = None
    ended: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    prompts: list[list[dict[str, str]]] = field(default_factory=list)
    prompt_text: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    columns: list[dict[str, Any]] = field(default_factory=list)
    num_prompts: int = 0
    k: int = 1
    eval_round: int | None = None
    sampler_logps: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def prefix_groups(self) -> torch.Tensor | None:
        """(N,) the prompt index of each row when prompts repeat (k > 1): the k rows of a prompt share it."""
        return self.group if self.k > 1 and self.group is not None else None

    def _per_example(self) -> dict[str, Any]:
        return {**super()._per_example(), "group": self.group, "ended": self.ended, "lengths": self.lengths,
                "prompts": self.prompts,
                "prompt_text": self.prompt_text, "completions": self.completions, "columns": self.columns}

    def _select_more(self, examples: torch.Tensor, rows: torch.Tensor, width: int) -> dict[str, Any]:
        extras = {}
        full = self.input_ids.shape[1]
        for name, value in self.extras.items():
            value = value[rows.to(value.device)]
            if value.dim() == 2 and value.shape[1] == full - 1:  # per-token values, aligned with log-probs
                value = value[:, : width - 1]
            elif value.dim() == 2 and value.shape[1] == full:
                value = value[:, :width]
            extras[name] = value
        sampler = None if self.sampler_logps is None else self.sampler_logps[rows.to(self.sampler_logps.device), : width - 1]
        return {"extras": extras, "sampler_logps": sampler}

    @classmethod
    def from_texts(cls, prompts: list[list[dict[str, str]]], completions: list[str],
                   columns: list[dict[str, Any]] | None = None) -> "RolloutBatch":
        """A text-only batch (no token rows: ``input_ids`` is (N, 0)), one completion per prompt: what a
        scorer is given outside training (evaluation, labelling data)."""
        from .records import last_user_text

        n = len(completions)
        empty = torch.zeros(n, 0, dtype=torch.long)  # (N, 0)
        return cls(input_ids=empty, attention_mask=empty.clone(), labels=empty.clone(), group=torch.arange(n),
                   ended=torch.ones(n), prompts=list(prompts), prompt_text=[last_user_text(p) for p in prompts],
                   completions=list(completions), columns=list(columns) if columns else [{} for _ in range(n)],
                   num_prompts=n, k=1)

    @classmethod
    def concat(cls, batches: list["RolloutBatch"], pad_id: int) -> "RolloutBatch":
        """One batch of several rollouts' rows (right-padded to the widest), prompts renumbered in order.

        Rewards are kept when every part has them; per-row ``extras`` and ``eval_round`` are not (concatenate
        before the method's preparation).
        """
        if len(batches) == 1:
            return batches[0]
        width = max(b.input_ids.shape[1] for b in batches)

        def padded(name: str, value: int) -> torch.Tensor:
            return torch.cat([torch.nn.functional.pad(getattr(b, name), (0, width - b.input_ids.shape[1]), value=value)
                              for b in batches])  # (N, T)

        offsets = torch.cumsum(torch.tensor([0] + [b.num_prompts for b in batches[:-1]]), 0).tolist()
        rewards = [b.rewards for b in batches]
        sampler = None
        if all(b.sampler_logps is not None for b in batches):
            sampler = torch.cat([torch.nn.functional.pad(b.sampler_logps, (0, width - 1 - b.sampler_logps.shape[1]))
                                 for b in batches])  # (N, T-1)
        return cls(input_ids=padded("input_ids", pad_id), attention_mask=padded("attention_mask", 0),
                   labels=padded("labels", IGNORE_INDEX),
                   index=torch.cat([b.index for b in batches]) if all(b.index is not None for b in batches) else None,
                   rewards=torch.cat(rewards) if all(r is not None for r in rewards) else None,
                   group=torch.cat([b.group + o for b, o in zip(batches, offsets)]),
                   ended=torch.cat([b.ended for b in batches]),
                   lengths=torch.cat([b.lengths for b in batches]) if all(b.lengths is not None for b in batches) else None,
                   prompts=[p for b in batches for p in b.prompts], prompt_text=[t for b in batches for t in b.prompt_text],
                   completions=[c for b in batches for c in b.completions], columns=[c for b in batches for c in b.columns],
                   num_prompts=sum(b.num_prompts for b in batches), k=batches[0].k, sampler_logps=sampler)

    def completion_lengths(self) -> torch.Tensor:
        """(N,) float tokens of each completion as sampled: ``lengths`` when recorded, else its target tokens
        (the same unless labels were masked)."""
        if self.lengths is not None:
            return self.lengths.float()
        return self.response_mask().sum(dim=1).float()  # (N,)

    def groups(self) -> torch.Tensor:
        """(P, k) row indices of each prompt's samples (rows are sample-major within a prompt)."""
        return torch.arange(self.num_rows).view(self.num_prompts, self.k)

    def select_prompts(self, prompts: torch.Tensor | list[int]) -> "RolloutBatch":
        """The sub-batch of whole prompts (all k samples of each), renumbered 0..p−1 in the given order."""
        prompts = torch.as_tensor(prompts, dtype=torch.long)
        sub = self.select(self.groups()[prompts].reshape(-1))
        return dataclasses.replace(sub, group=torch.arange(len(prompts)).repeat_interleave(self.k).to(self.group.device),
                                   num_prompts=len(prompts))

    def with_extras(self, **values: torch.Tensor) -> "RolloutBatch":
        """The batch with more per-row values (the method's preparation)."""
        return dataclasses.replace(self, extras={**self.extras, **values})


Batch = TokenBatch | PromptBatch

#: Every batch type by name, for checkpoints (a batch is saved as plain data: no pickled objects).
BATCH_TYPES: dict[str, type] = {cls.__name__: cls for cls in (TokenBatch, PairBatch, RankedBatch, UnpairedBatch,
                                                              PromptBatch, RolloutBatch)}


def batch_state(batch: Batch) -> dict[str, Any]:
    """``batch`` as plain data (tensors, numbers, strings, lists, dicts): what ``torch.load(weights_only=True)``
    reads back. :func:`batch_from_state` inverts it."""
    return {"type": type(batch).__name__,
            "fields": {f.name: _move(getattr(batch, f.name), "cpu") for f in dataclasses.fields(batch)}}


def batch_from_state(state: dict[str, Any], device: torch.device | str = "cpu") -> Batch:
    """The batch :func:`batch_state` saved, on ``device``."""
    return BATCH_TYPES[state["type"]](**state["fields"]).to(device)


def padded_rows(sequences: list[list[int]], labels: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` / ``labels``, each (R, T), of token lists right-padded to the longest."""
    from .tokenize import pad

    return {"input_ids": torch.tensor(pad(sequences, pad_id)),  # (R, T)
            "attention_mask": torch.tensor(pad([[1] * len(s) for s in sequences], 0)),  # (R, T)
            "labels": torch.tensor(pad(labels, IGNORE_INDEX))}  # (R, T)


def completion_rows(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """The rows of prompt + completion sequences, labels on the completion tokens only (each (N, T))."""
    return padded_rows([p + c for p, c in zip(prompt_ids, completion_ids)],
                       [[IGNORE_INDEX] * len(p) + c for p, c in zip(prompt_ids, completion_ids)], pad_id)

