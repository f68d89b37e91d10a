"""Per-token log-probs of a causal LM without materialising its logits.

The policy (and reference) path runs the transformer trunk to get hidden states and hands them,
with the ``lm_head`` weight, to :func:`alignkit.kernels.linear_token_stats`: no (B, T, V) logits and
no method-side ``log_softmax``. Labels are shifted here, once, for every method.
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


def lm_head_weight(model: Any) -> torch.Tensor:
    """The (V, d) output-embedding weight of a (possibly wrapped) HF causal LM."""
    return _unwrap(model).get_output_embeddings().weight


def hidden_states(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final hidden states (B, T, d) of a HF causal LM (after its last norm), no logits."""
    lm = _unwrap(model)
    trunk = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.base_model
    out = trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, T, d)


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
    hidden = hidden_states(model, input_ids, attention_mask)[:, :-1]  # (B, T-1, d)
    targets = labels[:, 1:]  # (B, T-1)
    weight = lm_head_weight(model)  # (V, d)
    return kernels.linear_token_stats(hidden, weight, targets, ignore_index=IGNORE_INDEX,
                                      temperature=temperature, entropy=entropy)


def sequence_logprobs(model: Any, batch: dict, **kwargs: Any) -> Any:
    """:func:`token_stats` on a collated batch (``input_ids``, ``attention_mask``, ``labels``)."""
    return token_stats(model, batch["input_ids"], batch["attention_mask"], batch["labels"], **kwargs)
