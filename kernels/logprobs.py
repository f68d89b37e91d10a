"""Public per-token log-prob ops: from logits, or fused with the lm_head, plus one-pass stats.

All ops compute, with ``z = logits / tau``:

    log p_t = z_{t, y_t} - logsumexp_v z_{t, v}
    H_t     = logsumexp_v z_{t, v} - Σ_v softmax(z_t)_v · z_{t, v}

For the fused ones the logits are the model's own processing of the lm_head output (each step
optional, defaults = a plain linear head; :mod:`alignkit.kernels.logit_processing`)::

    logits = (hidden @ weight.T + bias) · logit_scale
    logits = softcap · tanh(logits / softcap)          if softcap is set

in float32 (float64 for float64 inputs on the torch path), 0 where ``y_t == ignore_index``, without a
(B, T, V) log-softmax or (for the fused ops) (B·T, V) logits ever existing.
"""

from __future__ import annotations

from types import ModuleType

import torch

from alignkit.kernels.autograd import (
    LinearStatsFunction,
    LogitsStatsFunction,
    linear_stats_forward,
    logits_stats_forward,
)
from alignkit.kernels.dispatch import load_triton_module, resolve_backend
from alignkit.kernels.logit_processing import check_logit_processing
from alignkit.kernels.token_stats import TokenStats, mean_from_sum


def _check_inputs(name: str, x: torch.Tensor, labels: torch.Tensor, ndim: int) -> None:
    if x.dim() != 3 or labels.dim() != 2 or tuple(x.shape[:2]) != tuple(labels.shape):
        raise ValueError(
            f"{name}: expected (B, T, {'V' if ndim == 0 else 'd'}) input and (B, T) labels, "
            f"got {tuple(x.shape)} and {tuple(labels.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point input, got {x.dtype}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name}: expected integer labels, got {labels.dtype}")
    if labels.device != x.device:
        raise ValueError(f"{name}: labels on {labels.device}, input on {x.device}")


def _check_temperature(name: str, temperature: float) -> float:
    t = float(temperature)
    if not t > 0.0:
        raise ValueError(f"{name}: temperature must be > 0, got {temperature}")
    return t


def _engine(backend: str | None, device: torch.device, module: str) -> ModuleType | None:
    if resolve_backend(backend, device) == "torch":
        return None
    return load_triton_module(module, device)


def _wants_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _logits_stats(
    name: str,
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    temperature: float,
    entropy: bool,
    backend: str | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    _check_inputs(name, logits, labels, 0)
    tau = _check_temperature(name, temperature)
    b, t, v = logits.shape
    engine = _engine(backend, logits.device, "triton_logprobs")
    flat = logits.reshape(b * t, v)  # (N, V)
    if engine is not None:
        flat = flat.contiguous()
    y = labels.reshape(b * t).long()  # (N,)
    if _wants_grad(logits):
        logp, ent, seq_sum, count = LogitsStatsFunction.apply(
            flat, y, t, ignore_index, tau, entropy, engine
        )
    else:
        logp, _, ent, seq_sum, count = logits_stats_forward(
            engine, flat, y, t, ignore_index, tau, entropy
        )
    return logp.view(b, t), (ent.view(b, t) if entropy else None), seq_sum, count


def _check_bias(name: str, bias: torch.Tensor | None, weight: torch.Tensor) -> None:
    if bias is None:
        return
    if bias.dim() != 1 or bias.shape[0] != weight.shape[0] or not bias.is_floating_point():
        raise ValueError(
            f"{name}: bias must be a floating-point (V,) tensor with V = weight.shape[0] = "
            f"{weight.shape[0]}, got {tuple(bias.shape)} {bias.dtype}"
        )
    if bias.device != weight.device:
        raise ValueError(f"{name}: bias on {bias.device}, weight on {weight.device}")


def _linear_stats(
    name: str,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    temperature: float,
    entropy: bool,
    backend: str | None,
    bias: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    _check_inputs(name, hidden, labels, 1)
    tau = _check_temperature(name, temperature)
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(
            f"{name}: weight must be (V, d) with d = hidden.shape[-1] = {hidden.shape[2]}, "
            f"got {tuple(weight.shape)}"
        )
    _check_bias(name, bias, weight)
    check_logit_processing(name, logit_scale, softcap)
    scale, cap = float(logit_scale), (None if softcap is None else float(softcap))
    b, t, d = hidden.shape
    engine = _engine(backend, hidden.device, "triton_linear_logprobs")
    flat = hidden.reshape(b * t, d)  # (N, d)
    if engine is not None:
        flat, weight = flat.contiguous(), weight.contiguous()
        bias = bias.contiguous() if bias is not None else None
    y = labels.reshape(b * t).long()  # (N,)
    if _wants_grad(hidden, weight, *([bias] if bias is not None else [])):
        logp, ent, seq_sum, count = LinearStatsFunction.apply(
            flat, weight, bias, y, t, ignore_index, tau, entropy, engine, scale, cap
        )
    else:
        logp, _, ent, seq_sum, count, _ = linear_stats_forward(
            engine, flat, weight, y, t, ignore_index, tau, entropy,
            bias=bias, logit_scale=scale, softcap=cap,
        )
    return logp.view(b, t), (ent.view(b, t) if entropy else None), seq_sum, count


def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
    backend: str | None = None,
) -> torch.Tensor:
    """Log-probability of each label: ``log p = z_y/tau - logsumexp(z/tau)``.

    Rows are processed in chunks (torch) or blocks (Triton), so no (B, T, V) log-softmax is built;
    the backward recomputes ``softmax`` from ``logits`` and the saved per-row log-sum-exp.

    Args:
        logits: (B, T, V) any float dtype. Already aligned with ``labels`` (the caller shifts).
        labels: (B, T) int64.
        ignore_index: Label value of positions to skip; their log-prob is exactly 0 and they get no
            gradient.
        temperature: ``tau`` > 0, the logits are divided by it.
        backend: ``None`` (process-wide setting, see :func:`alignkit.kernels.set_backend`),
            ``"torch"`` or ``"triton"``.

    Returns:
        (B, T) float32 log-probs, differentiable w.r.t. ``logits`` (gradient in ``logits.dtype``).

    Raises:
        ValueError: bad shapes, dtype, temperature or backend name.
        RuntimeError: Triton forced but unusable here.
    """
    logp, _, _, _ = _logits_stats(
        "token_logprobs", logits, labels, ignore_index, temperature, False, backend
    )
    return logp  # (B, T)


def token_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
    entropy: bool = False,
    backend: str | None = None,
) -> TokenStats:
    """Log-probs, optional entropy and per-sequence sum / mean / count in one pass over the vocab.

    ``H = logsumexp(z/tau) - Σ_v p_v z_v/tau`` comes from the same online pass as the log-sum-exp;
    the per-sequence sum and count are accumulated by the same kernel (atomics on Triton).

    Args:
        logits: (B, T, V) any float dtype.
        labels: (B, T) int64.
        ignore_index: Label value of positions to skip.
        temperature: ``tau`` > 0.
        entropy: Also return the (differentiable) per-token entropy.
        backend: ``None``, ``"torch"`` or ``"triton"``.

    Returns:
        :class:`TokenStats` with (B, T) ``logprobs``, (B, T) ``entropy`` or None, and (B,) ``sum``,
        ``mean`` (0 for an all-ignored row), ``count``. ``logprobs``, ``entropy``, ``sum`` and
        ``mean`` are differentiable w.r.t. ``logits``.
    """
    logp, ent, seq_sum, count = _logits_stats(
        "token_stats", logits, labels, ignore_index, temperature, entropy, backend
    )
    return TokenStats(logp, ent, seq_sum, mean_from_sum(seq_sum, count), count)


def linear_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
    backend: str | None = None,
    bias: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """Log-probability of each label through the lm_head, never building the (B·T, V) logits.

    ``u = hidden @ weight.T + bias``; ``a = u · logit_scale``; ``c = softcap · tanh(a / softcap)``
    (``c = a`` without a cap); ``z = c / tau``; ``log p = z_y - logsumexp(z)``. With the defaults
    that is ``z = hidden @ weight.T / tau``. The processing steps are those of Phi (bias),
    Granite / Cohere (scale) and Gemma 2/3 (soft cap) heads, so the log-probs are those of the
    distribution the model samples from (``alignkit.logprobs.output_head`` finds them for a model).
    Tokens are processed in chunks with an online log-sum-exp over vocabulary blocks. Nothing is
    kept for the backward when no gradient is needed (inference, a reference model under
    ``no_grad``).

    Gradients (torch backend): ``d logp / d hidden`` is computed in the forward pass (exact: row
    ``i`` depends on ``h_i`` only, so the backward scales it by ``grad_output_i``);
    ``dL/dweight = Σ_i grad_output_i · d logp_i / d weight`` needs every token's own upstream
    gradient, so the backward recomputes each chunk's logits once for it. The Triton backend
    recomputes in its backward kernel for both (see ``docs/kernels.md``).

    Args:
        hidden: (B, T, d) final hidden states, any float dtype.
        weight: (V, d) lm_head weight.
        labels: (B, T) int64, already aligned with ``hidden``.
        ignore_index: Label value of positions to skip (log-prob exactly 0, no gradient).
        temperature: ``tau`` > 0.
        backend: ``None``, ``"torch"`` or ``"triton"``.
        bias: (V,) lm_head bias (any float dtype, may require grad), or None.
        logit_scale: ``s`` (finite, non-zero), multiplies ``hidden @ weight.T + bias``; a head that
            divides by ``k`` (Granite's ``logits_scaling``) passes ``1 / k``.
        softcap: Gemma-style cap (> 0) applied after the scale, or None.

    Returns:
        (B, T) float32 log-probs, differentiable w.r.t. ``hidden``, ``weight`` and ``bias``
        (gradients in their dtypes).

    Raises:
        ValueError: bad shapes, dtype, temperature, bias, logit_scale, softcap or backend name.
    """
    logp, _, _, _ = _linear_stats(
        "linear_token_logprobs", hidden, weight, labels, ignore_index, temperature, False, backend,
        bias, logit_scale, softcap,
    )
    return logp  # (B, T)



def linear_token_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
    entropy: bool = False,
    backend: str | None = None,
    bias: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> TokenStats:
    """:func:`token_stats` fused with the lm_head: one pass over the vocabulary, no (B·T, V) logits.

    The logits are processed as in :func:`linear_token_logprobs` (bias, scale, soft cap), then
    divided by ``tau``; the entropy is that of ``softmax(z)``.

    Args:
        hidden: (B, T, d) any float dtype.
        weight: (V, d).
        labels: (B, T) int64.
        ignore_index: Label value of positions to skip.
        temperature: ``tau`` > 0.
        entropy: Also return the (differentiable) per-token entropy.
        backend: ``None``, ``"torch"`` or ``"triton"``.
        bias: (V,) lm_head bias, or None.
        logit_scale: ``s``, multiplies ``hidden @ weight.T + bias``.
        softcap: Gemma-style cap (> 0), or None.

    Returns:
        :class:`TokenStats`; differentiable w.r.t. ``hidden``, ``weight`` and ``bias``.
    """
    logp, ent, seq_sum, count = _linear_stats(
        "linear_token_stats", hidden, weight, labels, ignore_index, temperature, entropy, backend,
        bias, logit_scale, softcap,
    )
    return TokenStats(logp, ent, seq_sum, mean_from_sum(seq_sum, count), count)
