"""Per-token log-probs of a causal LM without materialising its logits.

The policy (and reference) path runs the transformer trunk to get hidden states and hands them,
with the ``lm_head`` weight, to :func:`alignkit.kernels.linear_token_stats`: no (B, T, V) logits and
no method-side ``log_softmax``. Labels are shifted here, once, for every method.

The training loop hands accelerate a :class:`PolicyModule` (its ``forward`` is this path), and the
functions here *call* a prepared policy instead of reaching into its trunk, so DDP / FSDP / DeepSpeed
wrappers run for every method's forward (gradient sync, parameter gathering).

Length grouping: a batch pads every row to its longest, so a DPO batch of short and long answers
spends much of its compute on padding. With ``trainer.length_grouping = f`` (0 < f <= 1) the rows
are sorted by length and cut into groups whose rows each fill at least ``f`` of their group's width;
each group runs trimmed to that width (trailing padding only, so positions do not move) inside the
one forward, and the results come back in the batch's row order. Per row the result is the same
computation (equal to float rounding); padding FLOPs and activation memory shrink.
"""

from __future__ import annotations

from typing import Any

import torch

from alignkit import kernels

from .tokenize import IGNORE_INDEX


def _unwrap(model: Any) -> Any:
    # DDP / FSDP / accelerate wrappers keep the HF model in ``.module``.
    while hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
        model = model.module
    return model


def unwrap_lm(model: Any) -> Any:
    """The HF causal LM (or PEFT model) inside DDP / FSDP / DeepSpeed and :class:`PolicyModule` wrappers."""
    for _ in range(8):
        inner = getattr(model, "module", None)
        if inner is None:
            return model
        model = inner
    return model


def lm_head_weight(model: Any) -> torch.Tensor:
    """The (V, d) output-embedding weight of a (possibly wrapped) HF causal LM."""
    return _unwrap(model).get_output_embeddings().weight


_LENGTH_GROUPING = 0.0  # set per run from trainer.length_grouping (0: one padded forward)


def set_length_grouping(min_fill: float) -> None:
    """Group rows by length in every log-prob forward: each row fills >= ``min_fill`` of its group's width."""
    global _LENGTH_GROUPING
    if not 0.0 <= min_fill <= 1.0:
        raise ValueError(f"trainer.length_grouping={min_fill}: expected a fill share in [0, 1] (0: off)")
    _LENGTH_GROUPING = float(min_fill)


def length_groups(attention_mask: torch.Tensor, min_fill: float) -> list[tuple[torch.Tensor, int]] | None:
    """Rows grouped by length: ``[(row indices, width), ...]``, longest first; None if one group fits all.

    A row's length is one past its last real token (at least 2; trailing padding is what is cut).
    Rows sorted longest first join the current group while ``length >= min_fill * width``.
    """
    rows, width = attention_mask.shape
    if min_fill <= 0 or rows < 2:
        return None
    real = attention_mask.bool()  # (B, T)
    ends = (width - real.flip(1).int().argmax(1)).where(real.any(1), 0)  # (B,) one past the last real token
    ends = ends.clamp(min=min(2, width)).tolist()  # at least one predicted position per group
    order = sorted(range(rows), key=lambda r: -ends[r])
    groups: list[list[int]] = []
    for r in order:
        if groups and ends[r] >= min_fill * ends[groups[-1][0]]:
            groups[-1].append(r)
        else:
            groups.append([r])
    if len(groups) == 1 and ends[order[0]] == width:
        return None
    device = attention_mask.device
    return [(torch.tensor(g, device=device), ends[g[0]]) for g in groups]


def _grouped_stats(compute: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                   **kwargs: Any) -> Any:
    """``compute(ids, mask, labels, **kwargs)`` per length group, reassembled in row order."""
    groups = length_groups(attention_mask, _LENGTH_GROUPING)
    if groups is None:
        return compute(input_ids, attention_mask, labels, **kwargs)
    width = input_ids.shape[1] - 1  # predicted positions
    parts = []
    for rows, end in groups:
        stats = compute(input_ids[rows, :end], attention_mask[rows, :end], labels[rows, :end], **kwargs)
        pad = width - stats.logprobs.shape[1]
        parts.append((stats, pad))
    inverse = torch.argsort(torch.cat([rows for rows, _ in groups]))  # (B,) sorted position of each row

    def join(field: str, padded: bool) -> torch.Tensor:
        values = [getattr(s, field) for s, _ in parts]
        if padded:  # (g, end-1) -> (g, T-1), zeros where trimmed (ignored positions are 0 anyway)
            values = [torch.nn.functional.pad(v, (0, pad)) for v, (_, pad) in zip(values, parts)]
        return torch.cat(values)[inverse]

    entropy = join("entropy", True) if parts[0][0].entropy is not None else None
    return kernels.TokenStats(join("logprobs", True), entropy, join("sum", False), join("mean", False),
                              join("count", False))


def _trunk_hidden_states(lm: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    trunk = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.base_model
    out = trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, T, d)


class PolicyModule(torch.nn.Module):
    """The module the loop hands to ``accelerate.prepare``: its ``forward`` is the log-prob path.

    DDP sets up gradient synchronisation, FSDP gathers shards and DeepSpeed hooks its engine only in
    the *wrapper's* ``forward``; calling the HF trunk of the unwrapped model directly bypasses them.
    So every method's forward goes through this one: ``forward(input_ids, attention_mask)`` returns
    the final hidden states (B, T, d); with ``labels`` it returns the :class:`~alignkit.kernels.TokenStats`
    of the shifted labels, computed with the ``lm_head`` weight *inside* the forward (where FSDP holds
    it unsharded). Any other attribute (``generate``, ``save_pretrained``, ``config``, ...) is the
    wrapped model's, so the wrapper is transparent to code that treats the policy as a HF model.

    Args:
        module: a HF causal LM, or a PEFT model around one.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                temperature: float = 1.0, entropy: bool = False) -> Any:
        if labels is None:
            return _trunk_hidden_states(self.module, input_ids, attention_mask)  # (B, T, d)
        return _grouped_stats(self._stats, input_ids, attention_mask, labels, temperature=temperature, entropy=entropy)

    def _stats(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
               temperature: float, entropy: bool) -> Any:
        hidden = _trunk_hidden_states(self.module, input_ids, attention_mask)  # (B, T, d)
        return kernels.linear_token_stats(hidden[:, :-1], lm_head_weight(self.module), labels[:, 1:],
                                          ignore_index=IGNORE_INDEX, temperature=temperature, entropy=entropy)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


def routes_through_forward(model: Any) -> bool:
    """True when ``model`` is (or wraps) a :class:`PolicyModule`: call it rather than its trunk."""
    for _ in range(8):
        if isinstance(model, PolicyModule):
            return True
        inner = getattr(model, "module", None)
        if inner is None:
            return False
        model = inner
    return False


def hidden_states(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final hidden states (B, T, d) of a HF causal LM (after its last norm), no logits.

    A prepared policy (DDP / FSDP / DeepSpeed around a :class:`PolicyModule`) is *called*, so the
    wrapper's forward runs (gradient sync, parameter gathering); a bare HF model runs its trunk.
    """
    if routes_through_forward(model):
        return model(input_ids=input_ids, attention_mask=attention_mask)  # (B, T, d)
    return _trunk_hidden_states(_unwrap(model), input_ids, attention_mask)  # (B, T, d)


def token_stats(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, *,
                temperature: float = 1.0, entropy: bool = False) -> Any:
    """Log p(label_t | tokens < t) for every position, with per-sequence sums.

    Args:
        model: a HF causal LM (possibly wrapped).
        input_ids: (B, T) token ids.
        attention_mask: (B, T) 1 for real tokens.
        labels: (B, T) targets aligned with ``input_ids``, ``-100`` where not scored.
        temperature: divides the logits (use the sampling temperature for online methods).
        entropy: also return the per-token entropy (same pass over the vocabulary).

    Returns:
        :class:`alignkit.kernels.TokenStats` over the T-1 predicted positions: ``logprobs`` (B, T-1),
        ``sum`` / ``mean`` / ``count`` (B,), ``entropy`` (B, T-1) or None.
    """
    if routes_through_forward(model):
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, temperature=temperature,
                     entropy=entropy)

    def compute(ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor) -> Any:
        hidden = hidden_states(model, ids, mask)[:, :-1]  # (b, t-1, d)
        return kernels.linear_token_stats(hidden, lm_head_weight(model), targets[:, 1:], ignore_index=IGNORE_INDEX,
                                          temperature=temperature, entropy=entropy)  # weight (V, d)

    return _grouped_stats(compute, input_ids, attention_mask, labels)


def sequence_logprobs(model: Any, batch: dict, **kwargs: Any) -> Any:
    """:func:`token_stats` on a collated batch (``input_ids``, ``attention_mask``, ``labels``)."""
    return token_stats(model, batch["input_ids"], batch["attention_mask"], batch["labels"], **kwargs)
