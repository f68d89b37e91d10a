"""``torch.autograd.Function`` wrappers shared by the torch and Triton engines.

Each Function returns ``(logprobs, entropy, sum, count)`` for flattened tokens; its backward folds
the upstream gradients of the per-sequence sum (and of the mean, which the public op derives from
sum and count) into one per-token gradient and hands it to the engine's backward.

Engines are small modules with ``*_forward`` / ``*_backward`` functions: ``torch_logprobs`` and
``torch_linear_logprobs`` (torch, any device) and ``triton_logprobs`` and ``triton_linear_logprobs``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from alignkit.kernels import torch_linear_logprobs, torch_logprobs
from alignkit.kernels.token_stats import fold_token_grads


def _no_entropy(ref: torch.Tensor) -> torch.Tensor:
    return ref.new_empty(0)


def logits_stats_forward(
    engine: ModuleType | None,
    logits: torch.Tensor,
    labels: torch.Tensor,
    seq_len: int,
    ignore_index: int,
    temperature: float,
    entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Run one engine's forward from logits: ``(logp, lse, ent, seq_sum, count)``.

    Args:
        engine: A Triton kernel module, or None for the chunked torch engine.
        logits: (N, V) with ``N = B * seq_len``.
        labels: (N,) int64.
        seq_len: ``T``; rows ``b*T .. b*T+T-1`` belong to sequence ``b``.
        ignore_index: Label value of skipped positions.
        temperature: ``tau``.
        entropy: Also compute the entropy.

    Returns:
        (N,) float32 ``logp``, ``lse``, ``ent`` (or None), (B,) float32 ``seq_sum``, (B,) int64 ``count``.
    """
    if engine is not None:
        return engine.logits_forward(
            logits, labels, seq_len=seq_len, ignore_index=ignore_index,
            temperature=temperature, entropy=entropy,
        )
    logp, lse, ent = torch_logprobs.logits_forward(
        logits, labels, ignore_index=ignore_index, temperature=temperature, entropy=entropy
    )
    return logp, lse, ent, *_torch_seq_stats(logp, labels, seq_len, ignore_index)


def _torch_seq_stats(
    logp: torch.Tensor, labels: torch.Tensor, seq_len: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    # logp is already 0 at ignored positions, so a plain row sum is the masked sum.
    seq_sum = logp.view(-1, seq_len).sum(dim=1)  # (B,)
    count = (labels != ignore_index).view(-1, seq_len).sum(dim=1)  # (B,)
    return seq_sum, count


def _token_grads(
    g_logp: torch.Tensor | None,
    g_ent: torch.Tensor | None,
    g_sum: torch.Tensor | None,
    labels: torch.Tensor,
    count: torch.Tensor,
    seq_len: int,
    ignore_index: int,
    entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token upstream gradients ``(g, g_ent)`` (N,) from those of ``(logp, entropy, seq_sum)``."""
    valid = (labels != ignore_index).view(-1, seq_len)  # (B, T)
    g = fold_token_grads(
        None if g_logp is None else g_logp.view(-1, seq_len), g_sum, None, valid, count
    ).view(-1)  # (N,)
    return g, (g_ent if entropy else None)


class LogitsStatsFunction(torch.autograd.Function):
    """Differentiable ``(logp, entropy, seq_sum, count)`` from (N, V) logits."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: torch.Tensor,
        labels: torch.Tensor,
        seq_len: int,
        ignore_index: int,
        temperature: float,
        entropy: bool,
        engine: ModuleType | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        logp, lse, ent, seq_sum, count = logits_stats_forward(
            engine, logits, labels, seq_len, ignore_index, temperature, entropy
        )
        ctx.save_for_backward(logits, labels, lse, ent if ent is not None else _no_entropy(lse), count)
        ctx.cfg = (seq_len, ignore_index, temperature, entropy, engine)
        ctx.mark_non_differentiable(count)
        return logp, ent if ent is not None else _no_entropy(logp), seq_sum, count

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any,
        g_logp: torch.Tensor | None,
        g_ent: torch.Tensor | None,
        g_sum: torch.Tensor | None,
        _g_count: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, ...]:
        logits, labels, lse, ent, count = ctx.saved_tensors
        seq_len, ignore_index, temperature, entropy, engine = ctx.cfg
        g, ge = _token_grads(g_logp, g_ent, g_sum, labels, count, seq_len, ignore_index, entropy)
        grad = (engine or torch_logprobs).logits_backward(
            logits, labels, lse, ent if entropy else None, g, ge,
            ignore_index=ignore_index, temperature=temperature,
        )
        return grad, None, None, None, None, None, None


def linear_stats_forward(
    engine: ModuleType | None,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    seq_len: int,
    ignore_index: int,
    temperature: float,
    entropy: bool,
    grad_hidden: bool = False,
    *,
    bias: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None
]:
    """Run one engine's forward through the lm_head: ``(logp, lse, ent, seq_sum, count, dlogp_dh)``.

    Args:
        engine: A Triton kernel module, or None for the chunked torch engine.
        hidden: (N, d).
        weight: (V, d).
        labels: (N,) int64.
        seq_len: ``T``.
        ignore_index: Label value of skipped positions.
        temperature: ``tau``.
        entropy: Also compute the entropy.
        grad_hidden: Torch engine only: compute ``d logp_i / d h_i`` (N, d) in the forward.
        bias: (V,) lm_head bias, or None.
        logit_scale: ``s``, multiplies ``h W^T + b``.
        softcap: The cap, or None (see :mod:`alignkit.kernels.logit_processing`).

    Returns:
        (N,) float32 ``logp``, ``lse``, ``ent`` (or None), (B,) ``seq_sum``, (B,) int64 ``count``,
        and (N, d) ``dlogp_dh`` or None.
    """
    head = dict(bias=bias, logit_scale=logit_scale, softcap=softcap)
    if engine is not None:
        logp, lse, ent, seq_sum, count = engine.linear_forward(
            hidden, weight, labels, seq_len=seq_len, ignore_index=ignore_index,
            temperature=temperature, entropy=entropy, **head,
        )
        return logp, lse, ent, seq_sum, count, None
    logp, lse, ent, dh = torch_linear_logprobs.linear_forward(
        hidden, weight, labels, ignore_index=ignore_index, temperature=temperature,
        entropy=entropy, grad_hidden=grad_hidden, **head,
    )
    return logp, lse, ent, *_torch_seq_stats(logp, labels, seq_len, ignore_index), dh


class LinearStatsFunction(torch.autograd.Function):
    """Differentiable ``(logp, entropy, seq_sum, count)`` from hidden states and the lm_head
    (weight and optional bias, with the model's logit scale and soft cap)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        seq_len: int,
        ignore_index: int,
        temperature: float,
        entropy: bool,
        engine: ModuleType | None,
        logit_scale: float = 1.0,
        softcap: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        # Gradient in the forward pass is exact for hidden only (row i depends on token i only);
        # the entropy would need a second (N, d) buffer and matmul, cheaper to recompute then.
        grad_hidden = engine is None and need_h and not entropy
        logp, lse, ent, seq_sum, count, dh = linear_stats_forward(
            engine, hidden, weight, labels, seq_len, ignore_index, temperature, entropy,
            grad_hidden=grad_hidden, bias=bias, logit_scale=logit_scale, softcap=softcap,
        )
        recompute = need_w or need_b or dh is None
        ctx.save_for_backward(
            hidden if recompute else None,
            weight if recompute else None,
            bias if recompute else None,
            labels,
            lse,
            ent if ent is not None else _no_entropy(lse),
            count,
            dh,
        )
        ctx.cfg = (seq_len, ignore_index, temperature, entropy, engine, hidden.dtype, logit_scale, softcap)
        ctx.mark_non_differentiable(count)
        return logp, ent if ent is not None else _no_entropy(logp), seq_sum, count

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any,
        g_logp: torch.Tensor | None,
        g_ent: torch.Tensor | None,
        g_sum: torch.Tensor | None,
        _g_count: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, labels, lse, ent, count, dh = ctx.saved_tensors
        seq_len, ignore_index, temperature, entropy, engine, h_dtype, logit_scale, softcap = ctx.cfg
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        g, ge = _token_grads(g_logp, g_ent, g_sum, labels, count, seq_len, ignore_index, entropy)
        grad_h: torch.Tensor | None = None
        if dh is not None and need_h:
            grad_h = (dh * g[:, None].to(dh.dtype)).to(h_dtype)  # (N, d)
        recompute_h = need_h and dh is None
        grad_w: torch.Tensor | None = None
        grad_b: torch.Tensor | None = None
        if recompute_h or need_w or need_b:
            kwargs = dict(
                ignore_index=ignore_index, temperature=temperature,
                need_hidden=recompute_h, need_weight=need_w,
                bias=bias, need_bias=need_b, logit_scale=logit_scale, softcap=softcap,
            )
            backward = (engine or torch_linear_logprobs).linear_backward
            gh, grad_w, grad_b = backward(
                hidden, weight, labels, lse, ent if entropy else None, g, ge, **kwargs
            )
            if recompute_h:
                grad_h = gh
        return grad_h, grad_w, grad_b, None, None, None, None, None, None, None, None
