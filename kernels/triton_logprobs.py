"""Triton kernels for token log-probs (and entropy) from logits.

One program per row streams the row's V logits in ``BLOCK_V`` blocks with an online log-sum-exp:
``m`` (running max), ``s = Σ exp(z - m)``, ``t = Σ exp(z - m) · z`` (for the entropy) and the label's
logit. The per-sequence sum and valid-token count are accumulated in the same kernel with atomics.
The backward streams the logits once more and writes
``dL/dlogits = (g · (onehot_y - p) - g_H · p · (z - lse + H)) / tau``.

Importing this module runs ``@triton.jit``: under ``TRITON_INTERPRET=1`` the kernels run on CPU
tensors (see :func:`alignkit.kernels.dispatch.load_triton_module`).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from alignkit.kernels.token_stats import masked_grads

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")
"""Whether these kernels were decorated under the Triton CPU interpreter."""

BLOCK_V = 256 if INTERPRETED else 2048
"""Vocabulary block per loop step; the interpreter's cost grows with the number of blocks."""


def _num_warps() -> int:
    return 8


@triton.jit
def _logits_fwd_kernel(
    logits_ptr, stride_row, labels_ptr,
    logp_ptr, lse_ptr, ent_ptr, sum_ptr, count_ptr,
    V, T, ignore_index, temperature,
    BLOCK_V: tl.constexpr, ENTROPY: tl.constexpr, ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(labels_ptr + row)
    base = logits_ptr + row * stride_row
    m = tl.full((), float("-inf"), ACC)
    s = tl.zeros((), ACC)
    t = tl.zeros((), ACC)
    zy = tl.zeros((), ACC)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < V
        z = tl.load(base + cols, mask=mask, other=float("-inf")).to(ACC) / temperature
        m_new = tl.maximum(m, tl.max(z, axis=0))
        scale = tl.exp(m - m_new)
        e = tl.exp(z - m_new)
        s = s * scale + tl.sum(e, axis=0)
        if ENTROPY:
            # masked lanes hold z = -inf and e = 0: multiply by 0, not by -inf (NaN)
            t = t * scale + tl.sum(e * tl.where(mask, z, 0.0), axis=0)
        zy += tl.sum(tl.where(cols == label, z, 0.0), axis=0)
        m = m_new
    lse = m + tl.log(s)
    valid = label != ignore_index
    logp = tl.where(valid, zy - lse, 0.0)
    tl.store(logp_ptr + row, logp)
    tl.store(lse_ptr + row, lse)
    if ENTROPY:
        tl.store(ent_ptr + row, tl.where(valid, lse - t / s, 0.0))
    seq = row // T
    tl.atomic_add(sum_ptr + seq, logp, mask=valid)
    tl.atomic_add(count_ptr + seq, 1, mask=valid)


@triton.jit
def _logits_bwd_kernel(
    logits_ptr, stride_row, labels_ptr, lse_ptr, ent_ptr, g_ptr, ge_ptr,
    grad_ptr, stride_grad,
    V, temperature,
    BLOCK_V: tl.constexpr, ENTROPY: tl.constexpr, ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(labels_ptr + row)
    lse = tl.load(lse_ptr + row).to(ACC)
    g = tl.load(g_ptr + row).to(ACC)
    if ENTROPY:
        h = tl.load(ent_ptr + row).to(ACC)
        ge = tl.load(ge_ptr + row).to(ACC)
    base = logits_ptr + row * stride_row
    out = grad_ptr + row * stride_grad
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < V
        z = tl.load(base + cols, mask=mask, other=0.0).to(ACC) / temperature
        logq = z - lse
        p = tl.exp(logq)
        dz = -g * p
        if ENTROPY:
            dz -= ge * p * (logq + h)
        dz += tl.where(cols == label, g, 0.0)
        tl.store(out + cols, (dz / temperature).to(grad_ptr.dtype.element_ty), mask=mask)


def _acc(x: torch.Tensor) -> tuple[torch.dtype, tl.dtype]:
    return (torch.float64, tl.float64) if x.dtype == torch.float64 else (torch.float32, tl.float32)


def logits_forward(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    seq_len: int,
    ignore_index: int,
    temperature: float,
    entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Launch the forward kernel.

    Args:
        logits: (N, V) contiguous rows, ``N = B * seq_len``.
        labels: (N,) int64.
        seq_len: ``T``.
        ignore_index: Label value of skipped positions.
        temperature: ``tau``.
        entropy: Also compute the entropy.

    Returns:
        (N,) ``logp``, ``lse``, ``ent`` (or None), (B,) ``seq_sum``, (B,) int64 ``count``.
    """
    n, v = logits.shape
    acc, acc_tl = _acc(logits)
    logp = torch.empty(n, dtype=acc, device=logits.device)  # (N,)
    lse = torch.empty_like(logp)  # (N,)
    ent = torch.empty_like(logp) if entropy else lse  # (N,) dummy pointer when unused
    seq_sum = torch.zeros(n // seq_len, dtype=acc, device=logits.device)  # (B,)
    count = torch.zeros(n // seq_len, dtype=torch.int32, device=logits.device)  # (B,)
    if n:
        _logits_fwd_kernel[(n,)](
            logits, logits.stride(0), labels, logp, lse, ent, seq_sum, count,
            v, seq_len, ignore_index, temperature,
            BLOCK_V=BLOCK_V, ENTROPY=entropy, ACC=acc_tl, num_warps=_num_warps(),
        )
    return logp, lse, (ent if entropy else None), seq_sum, count.long()


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
) -> torch.Tensor:
    """Launch the backward kernel: (N, V) gradient in ``logits.dtype``.

    Args:
        logits: (N, V) contiguous.
        labels: (N,) int64.
        lse: (N,) from :func:`logits_forward`.
        ent: (N,) entropy when ``grad_ent`` is given.
        grad_logp: (N,) upstream gradient of the log-probs (0 at ignored rows).
        grad_ent: (N,) upstream gradient of the entropy, or None.
        ignore_index: Label value of skipped positions.
        temperature: ``tau``.
    """
    n, v = logits.shape
    acc, acc_tl = _acc(logits)
    g, ge = masked_grads(grad_logp, grad_ent, labels != ignore_index, acc)  # (N,)
    use_ent = ge is not None
    grad = torch.empty_like(logits)  # (N, V)
    if n:
        _logits_bwd_kernel[(n,)](
            logits, logits.stride(0), labels, lse, ent if use_ent else lse, g, ge if use_ent else g,
            grad, grad.stride(0), v, temperature,
            BLOCK_V=BLOCK_V, ENTROPY=use_ent, ACC=acc_tl, num_warps=_num_warps(),
        )
    return grad
