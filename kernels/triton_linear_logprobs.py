"""Triton kernels for token log-probs through the lm_head, never writing (N, V) logits.

Forward, one program per ``BLOCK_N`` tokens: for each ``BLOCK_V`` slice of the vocabulary the logits
tile ``z = h W^T / tau`` (BLOCK_N × BLOCK_V) is built in registers from ``BLOCK_D`` slices of
``hidden`` and ``weight`` (``tl.dot``), folded into an online log-sum-exp (running max ``m``,
``s = Σ exp(z - m)``, ``t = Σ exp(z - m) · z`` for the entropy) and the labels' logits are picked
out; then the tile is dropped. Per-sequence sums and counts are accumulated with atomics.

Backward, same grid: each logits tile is rebuilt once, turned into
``dz = (g · (onehot_y - p) - g_H · p · (z - lse + H)) / tau`` and immediately consumed by the two
gradient products: ``dL/dh += dz @ W`` (rows owned by the program, no race) and
``dL/dW += dz^T @ h`` (float32 atomics, programs share vocabulary rows). The upstream gradient of
each token must be known before ``dL/dW`` can be formed, hence this recompute rather than
gradient-in-forward.

A model's own logit processing (:mod:`alignkit.kernels.logit_processing`) is applied to each tile
right after the product: ``z = cap_out · tanh(cap_in · alpha · (h W^T + b))`` (or ``alpha · (h W^T + b)``),
with the bias block loaded per vocabulary block; the backward multiplies ``dz`` by
``(s / tau) · (1 - tanh²)`` (or ``s / tau``) and, when the bias needs a gradient, adds each tile's
column sums into a float32 (V,) buffer with atomics. ``tanh`` is written with ``exp`` (Triton has no
``tl.tanh`` and libdevice's does not run under the interpreter): ``tanh|x| = (1 - e) / (1 + e)``,
``e = exp(-2|x|)``, which never overflows; its absolute error is a few float32 ulps of 1.

Half-precision inputs feed ``tl.dot`` natively on GPU (float32 accumulator); float32 inputs use
IEEE float32 products unless ``torch.backends.cuda.matmul.allow_tf32`` is set. Under the CPU
interpreter operands are cast to float32 first (its bf16 ``tl.dot`` is wrong).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from alignkit.kernels.logit_processing import logit_processing
from alignkit.kernels.token_stats import masked_grads
from alignkit.kernels.torch_logprobs import acc_dtype

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")
"""Whether these kernels were decorated under the Triton CPU interpreter."""

# The interpreter's cost grows with programs × blocks; tests use small shapes with these sizes.
BLOCKS: dict[str, int] = (
    {"BLOCK_N": 16, "BLOCK_V": 64, "BLOCK_D": 32, "num_warps": 4}
    if INTERPRETED
    else {"BLOCK_N": 64, "BLOCK_V": 128, "BLOCK_D": 64, "num_warps": 8}
)


@triton.jit
def _logits_tile(
    h_ptr, w_ptr, stride_h, stride_w, rows, cols, rmask, cmask, D,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    CAST: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    acc = tl.zeros((BLOCK_N, BLOCK_V), ACC)
    for k0 in range(0, D, BLOCK_D):
        ks = k0 + tl.arange(0, BLOCK_D)
        kmask = ks < D
        h = tl.load(h_ptr + rows[:, None] * stride_h + ks[None, :],
                    mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w_ptr + cols[:, None] * stride_w + ks[None, :],
                    mask=cmask[:, None] & kmask[None, :], other=0.0)
        if CAST:
            h = h.to(ACC)
            w = w.to(ACC)
        acc = tl.dot(h, tl.trans(w), acc, input_precision=PRECISION, out_dtype=ACC)
    return acc


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _processed_tile(
    u, b_ptr, cols, cmask, alpha, cap_in, cap_out,
    HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr,
):
    # (z, t): processed logits of the raw tile u = h W^T and the tanh they came from (z when uncapped).
    if HAS_BIAS:
        b = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(u.dtype)
        u = u + b[None, :]
    z = u * alpha
    t = z
    if SOFTCAP:
        t = _tanh(z * cap_in)
        z = t * cap_out
    return z, t


@triton.jit
def _linear_fwd_kernel(
    h_ptr, w_ptr, b_ptr, labels_ptr, stride_h, stride_w,
    logp_ptr, lse_ptr, ent_ptr, sum_ptr, count_ptr,
    N, V, D, T, ignore_index, alpha, cap_in, cap_out,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    ENTROPY: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr,
    CAST: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    labels = tl.load(labels_ptr + rows, mask=rmask, other=ignore_index)
    m = tl.full((BLOCK_N,), float("-inf"), ACC)
    s = tl.zeros((BLOCK_N,), ACC)
    t = tl.zeros((BLOCK_N,), ACC)
    zy = tl.zeros((BLOCK_N,), ACC)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        cmask = cols < V
        u = _logits_tile(h_ptr, w_ptr, stride_h, stride_w, rows, cols, rmask, cmask, D,
                         BLOCK_N, BLOCK_V, BLOCK_D, CAST, PRECISION, ACC)
        z, _ = _processed_tile(u, b_ptr, cols, cmask, alpha, cap_in, cap_out, HAS_BIAS, SOFTCAP)
        z = tl.where(cmask[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        scale = tl.exp(m - m_new)
        e = tl.exp(z - m_new[:, None])
        s = s * scale + tl.sum(e, axis=1)
        if ENTROPY:
            t = t * scale + tl.sum(e * tl.where(cmask[None, :], z, 0.0), axis=1)
        zy += tl.sum(tl.where(cols[None, :] == labels[:, None], z, 0.0), axis=1)
        m = m_new
    lse = m + tl.log(s)
    valid = (labels != ignore_index) & rmask
    logp = tl.where(valid, zy - lse, 0.0)
    tl.store(logp_ptr + rows, logp, mask=rmask)
    tl.store(lse_ptr + rows, lse, mask=rmask)
    if ENTROPY:
        tl.store(ent_ptr + rows, tl.where(valid, lse - t / s, 0.0), mask=rmask)
    seq = rows // T
    tl.atomic_add(sum_ptr + seq, logp, mask=valid)
    tl.atomic_add(count_ptr + seq, tl.full((BLOCK_N,), 1, tl.int32), mask=valid)


@triton.jit
def _linear_bwd_kernel(
    h_ptr, w_ptr, b_ptr, labels_ptr, stride_h, stride_w,
    lse_ptr, ent_ptr, g_ptr, ge_ptr, dh_ptr, dw_ptr, db_ptr,
    N, V, D, alpha, cap_in, cap_out, grad_scale,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    ENTROPY: tl.constexpr, NEED_H: tl.constexpr, NEED_W: tl.constexpr, NEED_B: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr,
    CAST: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    labels = tl.load(labels_ptr + rows, mask=rmask, other=-1)
    lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0).to(ACC)
    g = tl.load(g_ptr + rows, mask=rmask, other=0.0).to(ACC)
    if ENTROPY:
        ent = tl.load(ent_ptr + rows, mask=rmask, other=0.0).to(ACC)
        ge = tl.load(ge_ptr + rows, mask=rmask, other=0.0).to(ACC)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        cmask = cols < V
        u = _logits_tile(h_ptr, w_ptr, stride_h, stride_w, rows, cols, rmask, cmask, D,
                         BLOCK_N, BLOCK_V, BLOCK_D, CAST, PRECISION, ACC)
        z, th = _processed_tile(u, b_ptr, cols, cmask, alpha, cap_in, cap_out, HAS_BIAS, SOFTCAP)
        logq = z - lse[:, None]
        p = tl.where(cmask[None, :], tl.exp(logq), 0.0)
        dz = -g[:, None] * p
        if ENTROPY:
            dz -= ge[:, None] * p * (logq + ent[:, None])
        dz += tl.where(cols[None, :] == labels[:, None], g[:, None], 0.0)
        # d z / d(h W^T + b) = (s / tau) · (1 - tanh²) capped, s / tau otherwise
        if SOFTCAP:
            dz = dz * (1.0 - th * th)
        dz = dz * grad_scale
        if NEED_B:
            tl.atomic_add(db_ptr + cols, tl.sum(dz, axis=0), mask=cmask)
        if not CAST:
            dz = dz.to(h_ptr.dtype.element_ty)  # tensor-core operand; accumulation stays float32
        for k0 in range(0, D, BLOCK_D):
            ks = k0 + tl.arange(0, BLOCK_D)
            kmask = ks < D
            if NEED_H:
                w = tl.load(w_ptr + cols[:, None] * stride_w + ks[None, :],
                            mask=cmask[:, None] & kmask[None, :], other=0.0)
                if CAST:
                    w = w.to(ACC)
                dh_ptrs = dh_ptr + rows[:, None] * D + ks[None, :]
                dh_mask = rmask[:, None] & kmask[None, :]
                dh = tl.load(dh_ptrs, mask=dh_mask, other=0.0)
                dh += tl.dot(dz, w, input_precision=PRECISION, out_dtype=ACC)
                tl.store(dh_ptrs, dh, mask=dh_mask)
            if NEED_W:
                h = tl.load(h_ptr + rows[:, None] * stride_h + ks[None, :],
                            mask=rmask[:, None] & kmask[None, :], other=0.0)
                if CAST:
                    h = h.to(ACC)
                dw = tl.dot(tl.trans(dz), h, input_precision=PRECISION, out_dtype=ACC)
                tl.atomic_add(dw_ptr + cols[:, None] * D + ks[None, :], dw,
                              mask=cmask[:, None] & kmask[None, :])


def _config(x: torch.Tensor) -> dict[str, object]:
    acc_tl = tl.float64 if x.dtype == torch.float64 else tl.float32
    cast = INTERPRETED or x.dtype in (torch.float32, torch.float64)
    tf32 = x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not INTERPRETED
    return {"CAST": cast, "PRECISION": "tf32" if tf32 else "ieee", "ACC": acc_tl}


def linear_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    seq_len: int,
    ignore_index: int,
    temperature: float,
    entropy: bool,
    bias: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Launch the fused forward kernel.

    Args:
        hidden: (N, d) contiguous, ``N = B * seq_len``.
        weight: (V, d) contiguous, same dtype as ``hidden``.
        labels: (N,) int64.
        seq_len: ``T``.
        ignore_index: Label value of skipped positions.
        temperature: ``tau``.
        entropy: Also compute the entropy.
        bias: (V,) contiguous lm_head bias, or None.
        logit_scale: ``s``, multiplies ``h W^T + b``.
        softcap: The cap, or None.

    Returns:
        (N,) ``logp``, ``lse``, ``ent`` (or None), (B,) ``seq_sum``, (B,) int64 ``count``.
    """
    n, d = hidden.shape
    v = weight.shape[0]
    if weight.dtype != hidden.dtype:
        weight = weight.to(hidden.dtype)
    proc = logit_processing(temperature, logit_scale, softcap)
    acc = acc_dtype(hidden)
    logp = torch.empty(n, dtype=acc, device=hidden.device)  # (N,)
    lse = torch.empty_like(logp)  # (N,)
    ent = torch.empty_like(logp) if entropy else lse  # (N,) dummy pointer when unused
    seq_sum = torch.zeros(n // seq_len, dtype=acc, device=hidden.device)  # (B,)
    count = torch.zeros(n // seq_len, dtype=torch.int32, device=hidden.device)  # (B,)
    if n:
        blocks = dict(BLOCKS)
        grid = (triton.cdiv(n, blocks["BLOCK_N"]),)
        _linear_fwd_kernel[grid](
            hidden, weight, bias if bias is not None else weight, labels, hidden.stride(0), weight.stride(0),
            logp, lse, ent, seq_sum, count,
            n, v, d, seq_len, ignore_index, proc.alpha, proc.cap_in, proc.cap_out,
            ENTROPY=entropy, HAS_BIAS=bias is not None, SOFTCAP=proc.capped, **_config(hidden), **blocks,
        )
    return logp, lse, (ent if entropy else None), seq_sum, count.long()


def linear_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor | None,
    grad_logp: torch.Tensor,
    grad_ent: torch.Tensor | None,
    *,
    ignore_index: int,
    temperature: float,
    need_hidden: bool,
    need_weight: bool,
    bias: torch.Tensor | None = None,
    need_bias: bool = False,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Launch the fused backward kernel.

    Args:
        hidden: (N, d) contiguous.
        weight: (V, d) contiguous.
        labels: (N,) int64.
        lse: (N,) from :func:`linear_forward`.
        ent: (N,) entropy when ``grad_ent`` is given.
        grad_logp: (N,) upstream gradient of the log-probs (0 at ignored rows).
        grad_ent: (N,) upstream gradient of the entropy, or None.
        ignore_index: Label value of skipped positions.
        temperature: ``tau``.
        need_hidden: Return ``dL/dhidden``.
        need_weight: Return ``dL/dweight``.
        bias: (V,) contiguous lm_head bias of the forward, or None.
        need_bias: Return ``dL/dbias``.
        logit_scale: ``s`` of the forward.
        softcap: The forward's cap, or None.

    Returns:
        ``(grad_hidden (N, d) in hidden.dtype, grad_weight (V, d) in weight.dtype, grad_bias (V,) in
        bias.dtype)``, each None when not needed.
    """
    n, d = hidden.shape
    v = weight.shape[0]
    w_in = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
    acc = acc_dtype(hidden)
    proc = logit_processing(temperature, logit_scale, softcap)
    g, ge = masked_grads(grad_logp, grad_ent, labels != ignore_index, acc)  # (N,)
    use_ent = ge is not None
    need_bias = need_bias and bias is not None
    dh = torch.zeros((n, d) if need_hidden else (1, 1), dtype=acc, device=hidden.device)
    dw = torch.zeros((v, d) if need_weight else (1, 1), dtype=acc, device=hidden.device)
    db = torch.zeros(v if need_bias else 1, dtype=acc, device=hidden.device)  # (V,)
    if n:
        blocks = dict(BLOCKS)
        grid = (triton.cdiv(n, blocks["BLOCK_N"]),)
        _linear_bwd_kernel[grid](
            hidden, w_in, bias if bias is not None else w_in, labels, hidden.stride(0), w_in.stride(0),
            lse, ent if use_ent else lse, g, ge if use_ent else g, dh, dw, db,
            n, v, d, proc.alpha, proc.cap_in, proc.cap_out, proc.grad_scale,
            ENTROPY=use_ent, NEED_H=need_hidden, NEED_W=need_weight, NEED_B=need_bias,
            HAS_BIAS=bias is not None, SOFTCAP=proc.capped,
            **_config(hidden), **blocks,
        )
    return (
        dh.to(hidden.dtype) if need_hidden else None,
        dw.to(weight.dtype) if need_weight else None,
        db.to(bias.dtype) if need_bias and bias is not None else None,
    )
