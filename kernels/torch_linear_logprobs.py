"""Chunked torch implementation of token log-probs through the lm_head, without (N, V) logits.

Tokens are processed ``chunk`` at a time; each chunk's (chunk, V) float32 logits are the only
vocabulary-sized buffer (two with a soft cap, three in its backward with entropy). With
``z = h W^T / tau``, ``p = softmax(z)`` and an upstream gradient
``g_i`` per token, ``dz_i = g_i (onehot_{y_i} - p_i)`` (plus the entropy term), so

* ``dL/dh_i = g_i (W_{y_i} - p_i W) / tau`` depends on token ``i`` only: it is computed in the
  forward pass as ``d logp_i / d h_i`` (N, d) and the backward scales row ``i`` by ``g_i`` — exact;
* ``dL/dW = Σ_i g_i (onehot_{y_i} - p_i) h_i^T / tau`` mixes every token with its own ``g_i``,
  unknown during the forward (DPO, PPO and REINFORCE weight tokens differently), so no (V, d) tensor
  computed there can be rescaled into it; the backward recomputes each chunk's logits once for it.

That is four (N·d·V) matrix products for forward + backward against three for the unfused
``log_softmax`` (which instead moves several (N, V) float32 tensors through memory). Every
vocabulary-sized elementwise pass is kept out of the products' way: the one-hot and the row scales
``g_i / tau`` act on (chunk, d) operands (``W_{y_i}``, ``h_i``), never on the (chunk, V) tile, so
the only passes over a tile are the ones the log-sum-exp needs (max, shift, exp, sum) and, in the
backward, ``exp(z - lse)``.

torch 2.13's native ``F.linear_cross_entropy(reduction="none")`` computes the same log-probs (it
recomputes logits in its backward); it is kept as an independent reference in
:mod:`alignkit.kernels.reference` and as a benchmark baseline rather than used here: on the
benchmark shape it was about 1.6x slower than this module's previous, slower version (63.5 s vs
39.0 s forward + backward on a loaded machine), it returns the input dtype (so half
inputs would lose float32 outputs), and it has no temperature, entropy or per-sequence statistics.

A model's own logit processing (bias ``b``, ``logit_scale`` ``s``, ``softcap``; see
:mod:`alignkit.kernels.logit_processing`) generalises the above with ``u = h W^T + b`` and
``dz/du = (s / tau) · f``, ``f = 1 - tanh²`` (capped) or 1: the scale folds into the (C, d) operand
``h · alpha`` (and ``b · alpha``), the bias costs one add over the tile, the cap a tanh in the
forward and ``f`` in the backward; the one-hot part then carries ``g_i · f_{i, y_i}``.
"""

from __future__ import annotations

import torch

from alignkit.kernels import torch_logprobs
from alignkit.kernels.logit_processing import LogitProcessing, logit_processing
from alignkit.kernels.token_stats import masked_grads, masked_labels
from alignkit.kernels.torch_logprobs import acc_dtype, chunk_rows

CHUNK_SCALE = 3
"""A chunk holds ``CHUNK_SCALE * torch_logprobs.CHUNK_ELEMENTS`` float32 logits (96 MB: 512 tokens at
V = 49,152). Each chunk's matrix products stream the whole (V, d) weight once, so small chunks are
slow: four chunked products of N = 2048, d = 576, V = 49,152 took 7.4-7.9 s CPU at 170 rows, 5.7 s at
512 and 5.8 s at 1024 rows per chunk (three unchunked products: 4.1 s)."""


def _chunk(vocab: int, chunk: int | None) -> int:
    return chunk or chunk_rows(vocab, CHUNK_SCALE * torch_logprobs.CHUNK_ELEMENTS)


def _acc_weight(weight: torch.Tensor) -> torch.Tensor:
    # Upcast once per call rather than per chunk: fp32 accumulation for bf16/fp16 inputs.
    return weight if weight.dtype in (torch.float32, torch.float64) else weight.float()


def _scaled_hidden(hidden: torch.Tensor, acc: torch.dtype, factor: float) -> torch.Tensor:
    # (C, d) h · factor: scale and temperature act on the small operand, not on the (C, V) logits.
    h = hidden.to(acc)
    return h * factor if factor != 1.0 else h


def _scaled_bias(bias: torch.Tensor | None, acc: torch.dtype, proc: LogitProcessing) -> torch.Tensor | None:
    # (V,) b · alpha, once per call, so the tile is (h · alpha) W^T + b · alpha = alpha · (h W^T + b).
    return None if bias is None else bias.to(acc) * proc.alpha


def _processed_logits(
    hs: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, proc: LogitProcessing, keep_tanh: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(z, t)``: (C, V) processed logits and, if capped and ``keep_tanh``, the (C, V) ``tanh`` they came from.

    ``hs`` is ``h · alpha`` and ``b`` is ``b · alpha``; without ``keep_tanh`` the cap is applied in place.
    """
    z = _chunk_logits(hs, w)  # (C, V) alpha · h W^T
    if b is not None:
        z.add_(b)
    if not proc.capped:
        return z, None
    t = z.mul_(proc.cap_in).tanh_()  # (C, V)
    if keep_tanh:
        return t * proc.cap_out, t  # (C, V) each
    return t.mul_(proc.cap_out), None


def _chunk_logits(hs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # (C, V) view of the (V, C) product W @ hs^T: on this CPU's BLAS about 20% faster than
    # hs @ W^T for C = 256 rows, and its transpose is the contiguous operand dz^T of dL/dW.
    return (w @ hs.T).T  # (C, V)


def linear_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int,
    temperature: float,
    entropy: bool,
    grad_hidden: bool,
    chunk: int | None = None,
    bias: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-prob of each label under ``softmax(z)``, ``z`` the processed ``hidden @ weight.T + bias``, chunked.

    ``z = softcap · tanh((h W^T + b) · s / softcap) / tau`` (``(h W^T + b) · s / tau`` without a cap).

    Args:
        hidden: (N, d) any float dtype.
        weight: (V, d) lm_head weight.
        labels: (N,) int64.
        ignore_index: Label value of positions to skip (log-prob and entropy 0).
        temperature: ``tau``.
        entropy: Also compute the entropy ``H = lse - Σ p z``.
        grad_hidden: Compute ``d logp_i / d h_i = (s / tau) (f_{y_i} W_{y_i} - (p_i f_i) W)`` now (only
            allowed without entropy; ``f = 1 - tanh²`` capped, else 1); 0 at ignored positions.
        chunk: Tokens per chunk (default from :data:`CHUNK_SCALE`).
        bias: (V,) lm_head bias, or None.
        logit_scale: ``s``, multiplies ``h W^T + b``.
        softcap: The cap, or None.

    Returns:
        ``(logp, lse, ent, dlogp_dh)``: (N,) float32 each (float64 for float64 inputs; ``ent`` None
        unless requested; ``lse`` of ``z``) and (N, d) ``d logp_i / d h_i`` or None.
    """
    assert not (entropy and grad_hidden), "entropy needs two hidden gradients: recompute instead"
    proc = logit_processing(temperature, logit_scale, softcap)
    n = hidden.shape[0]
    vocab = weight.shape[0]
    chunk = _chunk(vocab, chunk)
    acc = acc_dtype(hidden)
    w = _acc_weight(weight)  # (V, d)
    b = _scaled_bias(bias, acc, proc)  # (V,) or None
    valid, safe = masked_labels(labels, ignore_index)  # (N,)
    logp = torch.empty(n, dtype=acc, device=hidden.device)  # (N,)
    lse = torch.empty_like(logp)  # (N,)
    ent = torch.empty_like(logp) if entropy else None  # (N,)
    dh = torch.empty(n, hidden.shape[1], dtype=acc, device=hidden.device) if grad_hidden else None
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        z, t = _processed_logits(_scaled_hidden(hidden[s:e], acc, proc.alpha), w, b, proc,
                                 keep_tanh=dh is not None)  # (C, V), (C, V) or None
        zy = z.gather(1, safe[s:e, None]).squeeze(1)  # (C,)
        # One exp pass over the chunk, in place: ex = exp(z - m), lse = m + log Σ ex.
        m = z.amax(dim=-1)  # (C,)
        zm = z.sub_(m[:, None])  # (C, V)
        ex = zm.exp() if ent is not None else zm.exp_()  # (C, V)
        se = ex.sum(dim=-1)  # (C,)
        lse_c = m + se.log()  # (C,)
        lse[s:e] = lse_c
        logp[s:e] = zy - lse_c
        if ent is not None:
            # H = lse - Σ p z = log Σ ex - Σ ex (z - m) / Σ ex
            ent[s:e] = se.log() - torch.linalg.vecdot(ex, zm) / se
        if dh is not None:
            # (onehot_y - p) f W · s/tau = (f_y W_y - (ex f) W / Σ ex) · s/tau, the one-hot as a row gather
            w_y = w[safe[s:e]]  # (C, d)
            if t is not None:
                f = t.square_().neg_().add_(1.0)  # (C, V) 1 - tanh², in the tanh's storage
                w_y = w_y * f.gather(1, safe[s:e, None])
                ex = f.mul_(ex)  # (C, V) ex · f
            dh_c = torch.mm(ex, w, out=dh[s:e])  # (C, d)
            dh_c.div_(se[:, None]).neg_().add_(w_y)
            dh_c.mul_(valid[s:e, None].to(acc) * proc.grad_scale)
    logp = logp * valid  # (N,)
    if ent is not None:
        ent = ent * valid  # (N,)
    return logp, lse, ent, dh


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
    chunk: int | None = None,
    bias: torch.Tensor | None = None,
    need_bias: bool = False,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients w.r.t. ``hidden``, ``weight`` and ``bias``, recomputing each chunk's logits once.

    Per chunk, with ``q = p · (g + g_ent (z - lse + H))`` (``q = p``, row scale ``r = g``, without
    the entropy; ``r = 1`` with it), the upstream gradient of the logits is
    ``dz = g · onehot_y - r · q``; through the model's processing the gradient of the raw
    ``u = h W^T + b`` is ``du = (s / tau) · f · dz`` (``f = 1 - tanh²`` capped, else 1), and

    ``dL/dh = (s/tau) (g f_y · W_y - r · ((q f) @ W))``,
    ``dL/dW = scatter_y(g f_y · h s/tau) - (q f)^T @ (r · h s/tau)``,
    ``dL/db = (s/tau) (scatter_y(g f_y) - Σ_rows r · q f)``.

    Args:
        hidden: (N, d).
        weight: (V, d).
        labels: (N,) int64.
        lse: (N,) from :func:`linear_forward`.
        ent: (N,) entropy, needed when ``grad_ent`` is given.
        grad_logp: (N,) float32 upstream gradient of the log-probs.
        grad_ent: (N,) float32 upstream gradient of the entropy, or None.
        ignore_index: Label value of skipped positions.
        temperature: ``tau``.
        need_hidden: Return the gradient w.r.t. ``hidden``.
        need_weight: Return the gradient w.r.t. ``weight``.
        chunk: Tokens per chunk.
        bias: (V,) lm_head bias used by the forward, or None.
        need_bias: Return the gradient w.r.t. ``bias``.
        logit_scale: ``s`` of the forward.
        softcap: The forward's cap, or None.

    Returns:
        ``(grad_hidden (N, d) in hidden.dtype, grad_weight (V, d) in weight.dtype, grad_bias (V,) in
        bias.dtype)``, each None when not needed.
    """
    proc = logit_processing(temperature, logit_scale, softcap)
    n = hidden.shape[0]
    vocab = weight.shape[0]
    chunk = _chunk(vocab, chunk)
    acc = acc_dtype(hidden)
    w = _acc_weight(weight)  # (V, d)
    b = _scaled_bias(bias, acc, proc)  # (V,) or None
    valid, safe = masked_labels(labels, ignore_index)  # (N,)
    g, ge = masked_grads(grad_logp, grad_ent, valid, acc)  # (N,)
    gh = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if need_hidden else None
    gw = torch.zeros(w.shape, dtype=acc, device=weight.device) if need_weight else None  # (V, d)
    gb = torch.zeros(vocab, dtype=acc, device=weight.device) if need_bias else None  # (V,)
    gy = g if not proc.capped else torch.empty_like(g)  # (N,) coefficient of each one-hot: g · f_y
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        g_c = g[s:e, None]  # (C, 1)
        hs = _scaled_hidden(hidden[s:e], acc, proc.alpha)  # (C, d) h · alpha
        z, t = _processed_logits(hs, w, b, proc, keep_tanh=True)  # (C, V), (C, V) or None
        logq = z.sub_(lse[s:e, None].to(acc))  # (C, V) log p
        if ge is not None:
            assert ent is not None
            p = logq.exp()  # (C, V)
            q = logq.add_(ent[s:e, None].to(acc)).mul_(ge[s:e, None]).add_(g_c).mul_(p)  # (C, V)
            r = None
        else:
            q = logq.exp_()  # (C, V) p, in place
            r = g_c
        if t is not None:
            f = t.square_().neg_().add_(1.0)  # (C, V) 1 - tanh², in the tanh's storage
            gy[s:e] = g[s:e] * f.gather(1, safe[s:e, None]).squeeze(1)
            q = q.mul_(f)  # (C, V)
        if gh is not None:
            qw = q @ w  # (C, d)
            if r is not None:
                qw.mul_(r)
            gh[s:e] = (w[safe[s:e]] * gy[s:e, None] - qw) * proc.grad_scale
        if gw is not None:
            hg = hs if proc.alpha == proc.grad_scale else _scaled_hidden(hidden[s:e], acc, proc.grad_scale)
            gw.addmm_(q.T, hg * r if r is not None else hg, alpha=-1)
        if gb is not None:
            gb.sub_(q.T @ r.squeeze(1) if r is not None else q.sum(dim=0))
    if gw is not None:
        # the one-hot part, once for all tokens: index_add_ into (V, d) took ~0.15 s for 512 rows and
        # for 8192 alike here, so once per chunk would cost N / chunk times that
        gw.index_add_(0, safe, _scaled_hidden(hidden, acc, proc.grad_scale) * gy[:, None])
        if gw.dtype != weight.dtype:
            gw = gw.to(weight.dtype)
    if gb is not None:
        assert bias is not None
        gb = gb.index_add_(0, safe, gy).mul_(proc.grad_scale).to(bias.dtype)  # (V,)
    return gh, gw, gb
