"""Chunked torch implementation of token log-probs (and entropy) from logits.

Rows are processed ``chunk`` at a time so that only a (chunk, V) float32 buffer ever exists, never
a full (N, V) log-softmax: the forward keeps ``lse`` (and the entropy) per row, the backward
recomputes ``softmax`` per chunk from the logits the caller already holds.

Math, with ``z = logits / tau``, ``lse = logsumexp(z)``, ``p = softmax(z)``:

* ``log p_y = z_y - lse``;   ``d log p_y / d logits = (onehot_y - p) / tau``
* ``H = lse - Σ_v p_v z_v``;  ``d H / d logits = -p * (z - lse + H) / tau``
"""

from __future__ import annotations

import torch

from alignkit.kernels.token_stats import masked_grads, masked_labels

CHUNK_ELEMENTS = 1 << 23
"""Elements of the per-chunk float32 buffer (32 MB): big enough to keep kernels efficient."""


def chunk_rows(vocab: int, elements: int | None = None) -> int:
    """Rows per chunk so that a (rows, vocab) buffer holds about ``elements`` (default
    :data:`CHUNK_ELEMENTS`) values."""
    return max(1, (elements or CHUNK_ELEMENTS) // max(1, vocab))


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation and output dtype: float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _scaled_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # Always a fresh accumulation-dtype tensor: callers modify it in place.
    z = logits.to(acc_dtype(logits), copy=True)  # (C, V)
    if temperature != 1.0:
        z.div_(temperature)
    return z


def logits_forward(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int,
    temperature: float,
    entropy: bool,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-row log-prob of the label, log-sum-exp and optional entropy.

    Args:
        logits: (N, V) any float dtype.
        labels: (N,) int64, aligned with ``logits`` rows.
        ignore_index: Label value of positions to skip (log-prob and entropy 0).
        temperature: ``tau``; logits are divided by it.
        entropy: Also compute the entropy of ``softmax(logits / tau)``.
        chunk: Rows per chunk (default from :data:`CHUNK_ELEMENTS`).

    Returns:
        ``(logp, lse, ent)``: (N,) float32 each (float64 for float64 logits), ``ent`` is None unless requested.
    """
    n, v = logits.shape
    chunk = chunk or chunk_rows(v)
    valid, safe = masked_labels(labels, ignore_index)  # (N,)
    logp = torch.empty(n, dtype=acc_dtype(logits), device=logits.device)  # (N,)
    lse = torch.empty_like(logp)  # (N,)
    ent = torch.empty_like(logp) if entropy else None  # (N,)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        z = _scaled_logits(logits[s:e], temperature)  # (C, V)
        lse_c = torch.logsumexp(z, dim=-1)  # (C,)
        lse[s:e] = lse_c
        logp[s:e] = z.gather(1, safe[s:e, None]).squeeze(1) - lse_c
        if ent is not None:
            pz = (z - lse_c[:, None]).exp_().mul_(z)  # (C, V) p * z
            ent[s:e] = lse_c - pz.sum(dim=-1)
    logp = logp * valid  # (N,)
    if ent is not None:
        ent = ent * valid  # (N,)
    return logp, lse, ent


def logits_backward(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor | None,
    grad_logp: torch.Tensor,
    grad_ent: torch.Tensor | None,
    *,
    ignore_index: int,
    temperature: float,
    chunk: int | None = None,
) -> torch.Tensor:
    """Gradient w.r.t. the logits, recomputing ``softmax`` chunk by chunk.

    ``dL/dlogits = (g_logp * (onehot_y - p) - g_ent * p * (z - lse + H)) / tau`` per row.

    Args:
        logits: (N, V) the forward's input.
        labels: (N,) int64.
        lse: (N,) float32 from :func:`logits_forward`.
        ent: (N,) float32 entropy, needed when ``grad_ent`` is given.
        grad_logp: (N,) float32 upstream gradient of the log-probs, already 0 at ignored rows.
        grad_ent: (N,) float32 upstream gradient of the entropy, or None.
        ignore_index: Label value of skipped positions.
        temperature: ``tau``.
        chunk: Rows per chunk.

    Returns:
        (N, V) gradient in ``logits.dtype``.
    """
    n, v = logits.shape
    chunk = chunk or chunk_rows(v)
    valid, safe = masked_labels(labels, ignore_index)  # (N,)
    g, ge = masked_grads(grad_logp, grad_ent, valid, acc_dtype(logits))  # (N,)
    grad = torch.empty_like(logits)  # (N, V)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        logp_all = _scaled_logits(logits[s:e], temperature).sub_(lse[s:e, None])  # (C, V)
        p = logp_all.exp()  # (C, V)
        if ge is not None:
            assert ent is not None
            # -g_ent * p * (log p + H), reusing logp_all's storage
            dz = logp_all.add_(ent[s:e, None]).mul_(p).mul_(-ge[s:e, None])  # (C, V)
            dz.sub_(p.mul_(g[s:e, None]))
        else:
            dz = p.mul_(-g[s:e, None])  # (C, V)
        dz.scatter_add_(1, safe[s:e, None], g[s:e, None])
        if temperature != 1.0:
            dz.div_(temperature)
        grad[s:e] = dz
    return grad
