"""Chunked torch implementation of token log-probs through the lm_head, without (N, V) logits.

Tokens are processed ``chunk`` at a time; each chunk's (chunk, V) float32 logits are the only
vocabulary-sized buffer. Two gradient strategies, chosen by :mod:`alignkit.kernels.autograd`:

* gradient in the forward pass for ``hidden``: ``d logp_i / d h_i`` depends on token ``i`` only, so it
  is stored as (N, d) and the backward scales row ``i`` by ``grad_output_i`` — exact;
* recomputation in the backward pass for ``weight`` (and for ``hidden`` when the entropy is
  requested): ``dL/dW = Σ_i g_i (onehot_{y_i} - p_i) h_i^T / tau`` mixes every token with its own
  upstream gradient ``g_i``, which is unknown during the forward, so no (V, d) tensor computed there
  can be rescaled into it; the backward recomputes each chunk's logits once.

torch 2.13's native ``F.linear_cross_entropy(reduction="none")`` computes the same log-probs (it
recomputes logits in its backward); it is kept as an independent reference in
:mod:`alignkit.kernels.reference` rather than used here because on the benchmark shape it was
slower (16.2 s vs 12.7 s forward+backward, 4.7 s vs 3.6 s forward only), returns the input dtype
(so half inputs would lose float32 outputs), and has no entropy or per-sequence statistics.
"""

from __future__ import annotations

import torch

from alignkit.kernels.torch_logprobs import acc_dtype, chunk_rows


def _acc_weight(weight: torch.Tensor) -> torch.Tensor:
    # Upcast once per call rather than per chunk: fp32 accumulation for bf16/fp16 inputs.
    return weight if weight.dtype in (torch.float32, torch.float64) else weight.float()


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-prob of each label under ``softmax(hidden @ weight.T / tau)``, chunked over tokens.

    Args:
        hidden: (N, d) any float dtype.
        weight: (V, d) lm_head weight.
        labels: (N,) int64.
        ignore_index: Label value of positions to skip (log-prob and entropy 0).
        temperature: ``tau``.
        entropy: Also compute the entropy ``H = lse - Σ p z``.
        grad_hidden: Compute ``d logp_i / d h_i`` now (only allowed without entropy).
        chunk: Tokens per chunk (default: a (chunk, V) float32 buffer of ~32 MB).

    Returns:
        ``(logp, lse, ent, dlogp_dh)``: (N,) float32 each (float64 for float64 inputs; ``ent`` None
        unless requested) and (N, d) ``d logp_i / d h_i`` or None.
    """
    assert not (entropy and grad_hidden), "entropy needs two hidden gradients: recompute instead"
    n = hidden.shape[0]
    vocab = weight.shape[0]
    chunk = chunk or chunk_rows(vocab)
    acc = acc_dtype(hidden)
    w = _acc_weight(weight)  # (V, d)
    valid = labels != ignore_index  # (N,)
    safe = torch.where(valid, labels, 0)  # (N,)
    logp = torch.empty(n, dtype=acc, device=hidden.device)  # (N,)
    lse = torch.empty_like(logp)  # (N,)
    ent = torch.empty_like(logp) if entropy else None  # (N,)
    dh = torch.empty(n, hidden.shape[1], dtype=acc, device=hidden.device) if grad_hidden else None
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        z = hidden[s:e].to(acc) @ w.T  # (C, V)
        if temperature != 1.0:
            z.div_(temperature)
        zy = z.gather(1, safe[s:e, None]).squeeze(1)  # (C,)
        # One exp pass over the chunk, in place: e = exp(z - m), lse = m + log Σ e.
        m = z.amax(dim=-1)  # (C,)
        zm = z.sub_(m[:, None])  # (C, V)
        ex = zm.exp() if ent is not None else zm.exp_()  # (C, V)
        se = ex.sum(dim=-1)  # (C,)
        lse_c = m + se.log()  # (C,)
        lse[s:e] = lse_c
        logp[s:e] = zy - lse_c
        if ent is not None:
            # H = lse - Σ p z = log Σ e - Σ e (z - m) / Σ e
            ent[s:e] = se.log() - torch.linalg.vecdot(ex, zm) / se
        if dh is not None:
            dz = ex.div_(se[:, None]).neg_()  # (C, V) -p
            dz.scatter_add_(1, safe[s:e, None], torch.ones_like(dz[:, :1]))
            dz.mul_((valid[s:e, None] / temperature).to(acc))
            torch.mm(dz, w, out=dh[s:e])
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
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients w.r.t. ``hidden`` and ``weight``, recomputing each chunk's logits once.

    With ``dz = (g * (onehot_y - p) - g_ent * p * (z - lse + H)) / tau`` per chunk:
    ``dL/dh = dz @ W`` and ``dL/dW = Σ_chunks dz^T @ h``.

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

    Returns:
        ``(grad_hidden (N, d) in hidden.dtype or None, grad_weight (V, d) in weight.dtype or None)``.
    """
    n = hidden.shape[0]
    vocab = weight.shape[0]
    chunk = chunk or chunk_rows(vocab)
    acc = acc_dtype(hidden)
    w = _acc_weight(weight)  # (V, d)
    valid = labels != ignore_index  # (N,)
    safe = torch.where(valid, labels, 0)  # (N,)
    g = (grad_logp.to(acc) * valid)  # (N,)
    ge = grad_ent.to(acc) * valid if grad_ent is not None else None  # (N,)
    gh = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if need_hidden else None
    gw = torch.zeros(w.shape, dtype=acc, device=weight.device) if need_weight else None  # (V, d)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        h = hidden[s:e].to(acc)  # (C, d)
        z = h @ w.T  # (C, V)
        if temperature != 1.0:
            z.div_(temperature)
        logp_all = z.sub_(lse[s:e, None].to(acc))  # (C, V) log p
        if ge is not None:
            assert ent is not None
            p = logp_all.exp()  # (C, V)
            dz = logp_all.add_(ent[s:e, None].to(acc)).mul_(p).mul_(-ge[s:e, None])  # (C, V)
            dz.sub_(p.mul_(g[s:e, None]))
        else:
            dz = logp_all.exp_().mul_(-g[s:e, None])  # (C, V) -g p, in place
        dz.scatter_add_(1, safe[s:e, None], g[s:e, None])
        if temperature != 1.0:
            dz.div_(temperature)
        if gh is not None:
            gh[s:e] = dz @ w
        if gw is not None:
            gw.addmm_(dz.T, h)
    if gw is not None and gw.dtype != weight.dtype:
        gw = gw.to(weight.dtype)
    return gh, gw
