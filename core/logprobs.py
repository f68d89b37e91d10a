"""Per-token log-probs of a causal LM without materialising its logits.

The policy (and reference) path runs the transformer trunk to get hidden states and hands them,
with the ``lm_head`` weight, to :func:`alignkit.kernels.linear_token_stats`: no (B, T, V) logits and
no method-side ``log_softmax``. Labels are shifted here, once, for every method.

The training loop hands accelerate a :class:`PolicyModule` (its ``forward`` is this path), and the
functions here *call* a prepared policy instead of reaching into its trunk, so DDP / FSDP / DeepSpeed
wrappers run for every method's forward (gradient sync, parameter gathering).
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
        hidden = _trunk_hidden_states(self.module, input_ids, attention_mask)  # (B, T, d)
        if labels is None:
            return hidden
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
    hidden = hidden_states(model, input_ids, attention_mask)[:, :-1]  # (B, T-1, d)
    targets = labels[:, 1:]  # (B, T-1)
    weight = lm_head_weight(model)  # (V, d)
    return kernels.linear_token_stats(hidden, weight, targets, ignore_index=IGNORE_INDEX,
                                      temperature=temperature, entropy=entropy)


def sequence_logprobs(model: Any, batch: dict, **kwargs: Any) -> Any:
    """:func:`token_stats` on a collated batch (``input_ids``, ``attention_mask``, ``labels``)."""
    return token_stats(model, batch["input_ids"], batch["attention_mask"], batch["labels"], **kwargs)
