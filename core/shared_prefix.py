"""Shared-prefix packing: rows that start with the same tokens run those tokens once.

Group sampling (RLOO, GRPO, PPO with k samples per prompt) gives k rows that repeat one prompt, and
a preference pair repeats its prompt in the chosen and the rejected row. Scored row by row, the
model runs every prompt token k times, forward and backward. Packed, each group of rows becomes
one sequence::

    [ shared prefix | rest of row 1 | rest of row 2 | ... | padding ]

with position ids that restart at the prefix's length for every row's rest (each token keeps the
position it has in its own row) and an attention mask in which a token sees the prefix and the
earlier tokens of its own row only. Every token's hidden state is then the one its own row's causal
forward gives (to float rounding: the matrix shapes differ), and the gradient reaching the prefix is
the sum over the rows that share it, as in the row-by-row computation. The idea is Prefix Grouper's
(Liu et al. 2025, "Prefix Grouper: Efficient GRPO Training through Shared-Prefix Forward",
https://arxiv.org/abs/2506.05433), which splits the attention in two; here a prepared 4-D mask does
it, so the model's own attention (sdpa or eager), activation checkpointing and DDP / FSDP wrappers
run unchanged.

This module is the layout only (pure tensor code): :func:`pack_shared_prefixes` plans it from the
tokens, :class:`PackedRows` builds the mask and maps hidden states back to rows. Which models can
take a 4-D mask is decided in :mod:`alignkit.logprobs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Pack only when the packed sequences cost at most this share of the padded rows' compute.
MIN_SAVING = 0.9
#: Largest mask (G·L² entries) built: 2^26 booleans are 64 MiB.
MAX_MASK_ENTRIES = 1 << 26

PREFIX, PADDING = -1, -2  # segment ids of packed positions that belong to no single row


@dataclass(frozen=True)
class PackedRows:
    """N right-padded rows packed into G sequences of length L, one per group of rows.

    Attributes:
        input_ids: (G, L) token ids (0 on padding).
        position_ids: (G, L) each token's position in its own row.
        segment: (G, L) :data:`PREFIX` on a group's shared prefix, the row index r (0..N−1) on the
            tokens after it that belong to row r, :data:`PADDING` after the group's last row.
        source: (N, T) where each row position lives in the flattened (G·L) packed positions; −1 on
            the row's padding.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment: torch.Tensor
    source: torch.Tensor

    def allowed(self) -> torch.Tensor:
        """(G, 1, L, L) bool: query i may attend to key j (causal, within the prefix or its own row)."""
        length = self.segment.shape[1]
        index = torch.arange(length, device=self.segment.device)
        causal = index[None, :] <= index[:, None]  # (L, L) key <= query
        query, key = self.segment[:, :, None], self.segment[:, None, :]  # (G, L, 1), (G, 1, L)
        same = (key == query) | ((key == PREFIX) & (query != PADDING))  # (G, L, L); padding sees padding only
        return (causal[None] & same)[:, None]  # (G, 1, L, L)

    def attention_mask(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The 4-D mask for the model: bool (True = attend) when ``dtype`` is None, else additive
        (0 where allowed, the dtype's lowest value elsewhere) for attention that adds its mask."""
        allowed = self.allowed()
        if dtype is None:
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)  # (G, 1, L, L)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(G, L, ...) per packed position -> (N, T, ...) per row position, zeros on row padding.

        Differentiable: a prefix position's gradient is the sum of its rows' gradients.
        """
        flat = packed.reshape(-1, *packed.shape[2:])  # (G·L, ...)
        rows = flat[self.source.clamp(min=0)]  # (N, T, ...)
        pad = (self.source < 0).view(*self.source.shape, *([1] * (packed.dim() - 2)))
        return rows.masked_fill(pad, 0)


def _row_ends(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """(N,) one past each row's last real token, or None unless every row is right-padded."""
    real = attention_mask.bool()  # (N, T)
    ends = real.sum(dim=1)  # (N,)
    leading = real.int().cumprod(dim=1).sum(dim=1)  # (N,) real tokens before the first padding
    return ends if bool((leading == ends).all()) and bool((ends >= 1).all()) else None


def pack_shared_prefixes(input_ids: torch.Tensor, attention_mask: torch.Tensor, groups: torch.Tensor, *,
                         pair_cost: float = 0.0) -> PackedRows | None:
    """Plan the packing of rows whose ``groups`` ids are equal (a hint: the prefix is read from the tokens).

    A group's shared prefix is the longest run of leading tokens all its rows have in common, kept one
    token short of its shortest row so that every row has a token after it; a wrong hint only shortens
    it (rows with nothing in common are still packed correctly, side by side).

    Args:
        input_ids: (N, T) right-padded token ids.
        attention_mask: (N, T) 1 on real tokens.
        groups: (N,) integer group id per row (e.g. the prompt index of a rollout row).
        pair_cost: compute of one (query, key) attention pair relative to one token's pass through
            the rest of the model (``2·d·layers / parameters`` for a transformer: 4·d FLOPs per pair
            and layer against 2 per parameter); attention runs over every pair of a padded sequence.

    Returns:
        The :class:`PackedRows`, or None when packing would not pay: a row is left-padded or empty,
        no group has two rows, the packed cost ``G·L + pair_cost·G·L²`` exceeds :data:`MIN_SAVING`
        of the rows' ``N·T + pair_cost·N·T²`` (T: the longest row), or the mask would exceed
        :data:`MAX_MASK_ENTRIES`.
    """
    n, width = input_ids.shape
    ends = _row_ends(attention_mask)
    if ends is None or n < 2:
        return None
    members: dict[int, list[int]] = {}
    for row, group in enumerate(groups.tolist()):
        members.setdefault(int(group), []).append(row)
    if len(members) == n:  # no group with two rows: nothing is shared
        return None
    ends_list = ends.tolist()
    layout: list[tuple[int, list[int]]] = []  # (shared prefix length, rows) per group
    for rows in members.values():
        first = input_ids[rows[0]]  # (T,)
        same = (input_ids[rows] == first).int().cumprod(dim=1).sum(dim=1)  # (r,) leading tokens equal to the first row's
        shared = min(int(same.min()), min(ends_list[r] for r in rows) - 1)
        layout.append((shared, rows))
    lengths = [shared + sum(ends_list[r] - shared for r in rows) for shared, rows in layout]
    count, length, used = len(layout), max(lengths), int(ends.max())
    packed_cost = count * length * (1.0 + pair_cost * length)
    if packed_cost > MIN_SAVING * n * used * (1.0 + pair_cost * used) or count * length * length > MAX_MASK_ENTRIES:
        return None
    device = input_ids.device
    ids = torch.zeros(count, length, dtype=input_ids.dtype, device=device)  # (G, L)
    positions = torch.zeros(count, length, dtype=torch.long, device=device)  # (G, L)
    segment = torch.full((count, length), PADDING, dtype=torch.long, device=device)  # (G, L)
    source = torch.full((n, width), -1, dtype=torch.long, device=device)  # (N, T)
    for g, (shared, rows) in enumerate(layout):
        base = g * length
        ids[g, :shared] = input_ids[rows[0], :shared]
        positions[g, :shared] = torch.arange(shared, device=device)
        segment[g, :shared] = PREFIX
        offset = shared
        for r in rows:
            rest = ends_list[r] - shared
            ids[g, offset: offset + rest] = input_ids[r, shared: ends_list[r]]
            positions[g, offset: offset + rest] = torch.arange(shared, ends_list[r], device=device)
            segment[g, offset: offset + rest] = r
            source[r, :shared] = base + torch.arange(shared, device=device)
            source[r, shared: ends_list[r]] = base + offset + torch.arange(rest, device=device)
            offset += rest
    return PackedRows(ids, positions, segment, source)
