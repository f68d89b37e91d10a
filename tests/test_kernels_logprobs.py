"""Every log-prob path (torch / Triton, logits / fused lm_head, plain / stats) against log_softmax +
gather, in value and gradient.

Triton runs on CPU through its interpreter: TRITON_INTERPRET=1 must be set before our kernel
modules are imported (alignkit.kernels also sets it lazily on first Triton use); shapes are small
and chosen so that every loop has several blocks and ragged tails (V=100 vs BLOCK_V=64, d=40 vs
BLOCK_D=32, N=21 vs BLOCK_N=16).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import alignkit.kernels as K  # noqa: E402
from alignkit.kernels import torch_logprobs  # noqa: E402
from alignkit.kernels.dispatch import triton_available  # noqa: E402
from alignkit.kernels.reference import naive_token_stats, native_linear_logprobs  # noqa: E402

B, T, V, D = 3, 7, 100, 40
IGNORE = -100
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not triton_available(), reason="triton not installed"))]


@pytest.fixture(autouse=True)
def _small_torch_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Several row chunks (5 rows each) so the torch engines' chunk loops are exercised.
    monkeypatch.setattr(torch_logprobs, "CHUNK_ELEMENTS", 5 * V)


def _labels(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (B, T), generator=gen)  # (B, T)
    labels[0, :2] = IGNORE  # a prompt
    labels[1, :] = IGNORE  # a row with no valid token
    labels[2, -1] = V - 1  # the last vocabulary entry (ragged last block)
    return labels


def _inputs(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=gen, dtype=torch.float64)  # (B, T, d)
    weight = torch.randn(V, D, generator=gen, dtype=torch.float64) * 2 * D**-0.5  # (V, d)
    return hidden.to(dtype).requires_grad_(), weight.to(dtype).requires_grad_()


def _upstream(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # Different upstream gradient per token and per output, as in DPO / PPO losses.
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, T, generator=gen),  # (B, T) for logprobs
        torch.randn(B, T, generator=gen),  # (B, T) for entropy
        torch.randn(B, generator=gen),  # (B,) for sum
        torch.randn(B, generator=gen),  # (B,) for mean
    )


def _loss(stats: K.TokenStats, entropy: bool) -> torch.Tensor:
    g_lp, g_h, g_s, g_m = (g.to(stats.logprobs.dtype) for g in _upstream())
    loss = (stats.logprobs * g_lp).sum() + (stats.sum * g_s).sum() + (stats.mean * g_m).sum()
    if entropy:
        assert stats.entropy is not None
        loss = loss + (stats.entropy * g_h).sum()
    return loss


def _reference(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, tau: float,
               entropy: bool) -> tuple[K.TokenStats, torch.Tensor, torch.Tensor]:
    h = hidden.detach().to(torch.float64 if hidden.dtype == torch.float64 else torch.float32)
    w = weight.detach().to(h.dtype)
    h.requires_grad_()
    w.requires_grad_()
    ref = naive_token_stats(h @ w.T, labels, ignore_index=IGNORE, temperature=tau)
    gh, gw = torch.autograd.grad(_loss(ref, entropy), (h, w))
    return ref, gh, gw


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(a.to(b.dtype), b, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [True, False], ids=["linear", "logits"])
@pytest.mark.parametrize("mode", ["logprobs", "stats", "stats_entropy"])
@pytest.mark.parametrize("tau", [1.0, 0.7])
def test_matches_log_softmax_gather_fp32(backend: str, fused: bool, mode: str, tau: float) -> None:
    hidden, weight = _inputs(torch.float32)
    labels = _labels()
    entropy = mode == "stats_entropy"
    ref, ref_gh, ref_gw = _reference(hidden, weight, labels, tau, entropy)
    kw = dict(ignore_index=IGNORE, temperature=tau, backend=backend)
    if mode == "logprobs":
        out = (K.linear_token_logprobs(hidden, weight, labels, **kw) if fused
               else K.token_logprobs(hidden @ weight.T, labels, **kw))  # (B, T)
        assert out.dtype == torch.float32 and out.shape == (B, T)
        _close(out, ref.logprobs, 1e-5)
        g_lp = _upstream()[0]
        gh, gw = torch.autograd.grad((out * g_lp).sum(), (hidden, weight))
        # the reference's gradient also includes the sum / mean terms: recompute without them
        r = naive_token_stats(hidden @ weight.T, labels, temperature=tau)
        ref_gh, ref_gw = torch.autograd.grad((r.logprobs * g_lp).sum(), (hidden, weight))
    else:
        fn = K.linear_token_stats if fused else K.token_stats
        args = (hidden, weight, labels) if fused else (hidden @ weight.T, labels)
        stats = fn(*args, entropy=entropy, **kw)
        _close(stats.logprobs, ref.logprobs, 1e-5)
        _close(stats.sum, ref.sum, 1e-5)
        _close(stats.mean, ref.mean, 1e-5)
        assert stats.count.tolist() == ref.count.tolist() == [T - 2, 0, T]
        assert stats.count.dtype == torch.int64
        if entropy:
            assert stats.entropy is not None and stats.entropy.dtype == torch.float32
            _close(stats.entropy, ref.entropy, 1e-5)
        else:
            assert stats.entropy is None
        gh, gw = torch.autograd.grad(_loss(stats, entropy), (hidden, weight))
    _close(gh, ref_gh, 1e-5)
    _close(gw, ref_gw, 1e-5)
    assert gh.dtype == hidden.dtype and gw.dtype == weight.dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [True, False], ids=["linear", "logits"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_fp32(backend: str, fused: bool, dtype: torch.dtype) -> None:
    hidden, weight = _inputs(dtype)
    labels = _labels()
    # The reference sees the same rounded inputs in float32, so only the accumulation can differ.
    ref, ref_gh, ref_gw = _reference(hidden, weight, labels, 0.7, True)
    if fused:
        stats = K.linear_token_stats(hidden, weight, labels, temperature=0.7, entropy=True,
                                     backend=backend)
    else:
        logits = (hidden.float() @ weight.float().T).to(dtype)  # (B, T, V) rounded like a model's
        ref = naive_token_stats(logits.float(), labels, temperature=0.7)
        stats = K.token_stats(logits, labels, temperature=0.7, entropy=True, backend=backend)
    assert stats.logprobs.dtype == torch.float32
    assert stats.entropy is not None
    _close(stats.logprobs, ref.logprobs, 1e-4)
    _close(stats.entropy, ref.entropy, 1e-4)
    _close(stats.mean, ref.mean, 1e-4)
    if fused:
        gh, gw = torch.autograd.grad(_loss(stats, True), (hidden, weight))
        assert gh.dtype == dtype and gw.dtype == dtype
        # only the final rounding to the half dtype differs
        tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
        _close(gh.float(), ref_gh, tol)
        _close(gw.float(), ref_gw, tol)
        assert torch.isfinite(gh).all() and torch.isfinite(gw).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [True, False], ids=["linear", "logits"])
def test_all_ignored_rows_give_zeros_and_no_nan(backend: str, fused: bool) -> None:
    hidden, weight = _inputs(torch.float32)
    labels = torch.full((B, T), IGNORE)  # (B, T) nothing valid anywhere
    labels[2, 3] = 5
    if fused:
        stats = K.linear_token_stats(hidden, weight, labels, entropy=True, backend=backend)
    else:
        stats = K.token_stats(hidden @ weight.T, labels, entropy=True, backend=backend)
    assert stats.entropy is not None
    assert (stats.logprobs[:2] == 0).all() and (stats.entropy[:2] == 0).all()
    assert stats.mean[:2].tolist() == [0.0, 0.0] and stats.count.tolist() == [0, 0, 1]
    gh, gw = torch.autograd.grad(_loss(stats, True), (hidden, weight))
    assert torch.isfinite(gh).all() and torch.isfinite(gw).all()
    assert (gh[:2] == 0).all()
    labels[2, 3] = IGNORE
    out = K.linear_token_logprobs(hidden, weight, labels, backend=backend)  # (B, T)
    assert (out == 0).all()
    gh, gw = torch.autograd.grad(out.sum(), (hidden, weight))
    assert (gh == 0).all() and (gw == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_ignore_index_and_int32_labels(backend: str) -> None:
    hidden, weight = _inputs(torch.float32)
    labels = _labels()
    custom = torch.where(labels == IGNORE, torch.full_like(labels, 7777), labels).int()
    a = K.linear_token_logprobs(hidden, weight, labels, backend=backend)
    b = K.linear_token_logprobs(hidden, weight, custom, ignore_index=7777, backend=backend)
    _close(b, a, 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("need", ["hidden", "weight"])
def test_gradient_for_one_input_only(backend: str, need: str) -> None:
    hidden, weight = _inputs(torch.float32)
    labels = _labels()
    ref, ref_gh, ref_gw = _reference(hidden, weight, labels, 0.7, False)
    h = hidden.detach().requires_grad_(need == "hidden")
    w = weight.detach().requires_grad_(need == "weight")
    stats = K.linear_token_stats(h, w, labels, temperature=0.7, backend=backend)
    (grad,) = torch.autograd.grad(_loss(stats, False), (h if need == "hidden" else w,))
    _close(grad, ref_gh if need == "hidden" else ref_gw, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_skips_gradient_work(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from alignkit.kernels import torch_linear_logprobs

    seen: list[bool] = []
    original = torch_linear_logprobs.linear_forward

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(bool(kwargs["grad_hidden"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch_linear_logprobs, "linear_forward", spy)
    hidden, weight = _inputs(torch.float32)
    labels = _labels()
    with torch.no_grad():
        out = K.linear_token_logprobs(hidden, weight, labels, backend=backend)
    assert not out.requires_grad and out.grad_fn is None
    assert seen == ([False] if backend == "torch" else [])
    ref, _, _ = _reference(hidden, weight, labels, 1.0, False)
    _close(out, ref.logprobs, 1e-5)
    # with grad enabled, the torch engine computes d logp / d hidden during the forward
    K.linear_token_logprobs(hidden, weight, labels, backend=backend)
    assert seen == ([False, True] if backend == "torch" else [])


def test_torch_linear_path_matches_native_linear_cross_entropy() -> None:
    hidden, weight = _inputs(torch.float32)
    labels = _labels()
    ours = K.linear_token_logprobs(hidden, weight, labels, temperature=0.7, backend="torch")
    native = native_linear_logprobs(hidden.reshape(-1, D), weight, labels.reshape(-1),
                                    ignore_index=IGNORE, temperature=0.7).view(B, T)
    _close(ours, native, 1e-5)
    g = _upstream()[0]
    a = torch.autograd.grad((ours * g).sum(), (hidden, weight))
    b = torch.autograd.grad((native * g).sum(), (hidden, weight))
    _close(a[0], b[0], 1e-5)
    _close(a[1], b[1], 1e-5)


def test_entropy_matches_explicit_formula() -> None:
    # H = logsumexp(z) - Σ p z  ==  -Σ p log p, with z = logits / tau
    hidden, weight = _inputs(torch.float64)
    labels = _labels()
    z = (hidden @ weight.T).detach() / 0.5  # (B, T, V)
    p = torch.softmax(z, dim=-1)  # (B, T, V)
    explicit = (torch.logsumexp(z, -1) - (p * z).sum(-1)) * (labels != IGNORE)  # (B, T)
    for backend in ("torch", "triton") if triton_available() else ("torch",):
        got = K.linear_token_stats(hidden, weight, labels, temperature=0.5, entropy=True,
                                   backend=backend).entropy
        assert got is not None
        _close(got, explicit, 1e-10)
        got = K.token_stats(hidden @ weight.T, labels, temperature=0.5, entropy=True,
                            backend=backend).entropy
        assert got is not None
        _close(got, explicit, 1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [True, False], ids=["linear", "logits"])
def test_gradcheck_float64(backend: str, fused: bool) -> None:
    # float64 inputs give float64 outputs (the one exception to float32), so gradcheck is exact.
    # The Triton interpreter handles float64 tl.dot; gradcheck's fast mode keeps it quick.
    b, t, v, d = 2, 3, 19, 5
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(b, t, d, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, d, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, v, (b, t), generator=gen)
    labels[1, 0] = IGNORE

    def fn(h: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if fused:
            s = K.linear_token_stats(h, w, labels, temperature=0.8, entropy=True, backend=backend)
        else:
            s = K.token_stats(h @ w.T, labels, temperature=0.8, entropy=True, backend=backend)
        assert s.entropy is not None
        return s.logprobs, s.entropy, s.sum, s.mean

    assert torch.autograd.gradcheck(fn, (hidden, weight), fast_mode=backend == "triton")
    assert torch.autograd.gradcheck(
        lambda h, w: K.linear_token_logprobs(h, w, labels, temperature=0.8, backend=backend),
        (hidden, weight), fast_mode=backend == "triton",
    )


def test_rejects_bad_inputs() -> None:
    hidden, weight = _inputs(torch.float32)
    labels = _labels()
    with pytest.raises(ValueError, match="temperature"):
        K.token_logprobs(hidden @ weight.T, labels, temperature=0.0)
    with pytest.raises(ValueError, match="weight must be"):
        K.linear_token_logprobs(hidden, weight[:, :3], labels)
    with pytest.raises(ValueError, match=r"\(B, T\) labels"):
        K.token_logprobs(hidden @ weight.T, labels[:, :3])


def test_non_contiguous_logits() -> None:
    hidden, weight = _inputs(torch.float32)
    labels = _labels()
    logits = (hidden @ weight.T).transpose(0, 1).contiguous().transpose(0, 1)  # (B, T, V) strided
    ref, _, _ = _reference(hidden, weight, labels, 1.0, False)
    for backend in ("torch", "triton") if triton_available() else ("torch",):
        _close(K.token_logprobs(logits, labels, backend=backend), ref.logprobs, 1e-5)


# ---------------------------------------------------------------- a model's own logit processing
# Bias (Phi), scale (Granite divides, Cohere multiplies) and soft cap (Gemma 2/3), applied in this order
# before the temperature: z = cap·tanh((h W^T + b)·s / cap) / tau. The reference builds those logits in
# float64 with plain torch ops and takes log_softmax + gather.

HEADS = {
    "bias": dict(bias=True, logit_scale=1.0, softcap=None),
    "scale": dict(bias=False, logit_scale=0.25, softcap=None),
    "softcap": dict(bias=False, logit_scale=1.0, softcap=2.5),
    "all": dict(bias=True, logit_scale=1.5, softcap=2.5),
}


def _bias(dtype: torch.dtype, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(V, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()  # (V,)


def _processed_reference(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         labels: torch.Tensor, tau: float, logit_scale: float, softcap: float | None,
                         ) -> tuple[K.TokenStats, tuple[torch.Tensor, ...]]:
    """float64 stats of the processed logits and the float64 leaves (hidden, weight[, bias])."""
    leaves = [x.detach().double().requires_grad_() for x in (hidden, weight, bias) if x is not None]
    h, w = leaves[0], leaves[1]
    u = h @ w.T  # (B, T, V)
    if bias is not None:
        u = u + leaves[2]
    a = u * logit_scale
    if softcap is not None:
        a = softcap * torch.tanh(a / softcap)
    return naive_token_stats(a, labels, ignore_index=IGNORE, temperature=tau), tuple(leaves)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("mode", ["logprobs", "stats_entropy"])
def test_logit_processing_matches_float64_reference(backend: str, head: str, mode: str) -> None:
    spec = HEADS[head]
    hidden, weight = _inputs(torch.float32)
    bias = _bias(torch.float32) if spec["bias"] else None
    labels = _labels()
    tau = 1.0 if mode == "logprobs" else 0.7
    kw = dict(ignore_index=IGNORE, temperature=tau, backend=backend, bias=bias,
              logit_scale=spec["logit_scale"], softcap=spec["softcap"])
    ref, leaves = _processed_reference(hidden, weight, bias, labels, tau, spec["logit_scale"], spec["softcap"])
    inputs = tuple(x for x in (hidden, weight, bias) if x is not None)
    if mode == "logprobs":
        out = K.linear_token_logprobs(hidden, weight, labels, **kw)  # (B, T)
        assert out.dtype == torch.float32
        _close(out, ref.logprobs, 1e-5)
        g_lp = _upstream()[0]
        grads = torch.autograd.grad((out * g_lp).sum(), inputs)
        want = torch.autograd.grad((ref.logprobs * g_lp.double()).sum(), leaves)
    else:
        stats = K.linear_token_stats(hidden, weight, labels, entropy=True, **kw)
        assert stats.entropy is not None
        _close(stats.logprobs, ref.logprobs, 1e-5)
        _close(stats.entropy, ref.entropy, 1e-5)
        _close(stats.sum, ref.sum, 1e-5)
        _close(stats.mean, ref.mean, 1e-5)
        assert stats.count.tolist() == ref.count.tolist() == [T - 2, 0, T]
        grads = torch.autograd.grad(_loss(stats, True), inputs)
        want = torch.autograd.grad(_loss(ref, True), leaves)
    for got, ref_grad, x in zip(grads, want, inputs):
        assert got.dtype == x.dtype and got.shape == x.shape
        _close(got, ref_grad, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("need", ["hidden", "weight", "bias"])
def test_logit_processing_gradient_for_one_input_only(backend: str, need: str) -> None:
    # hidden alone: the torch engine's gradient-in-forward path (through the cap); bias alone: a
    # frozen trunk and head with a trainable bias still needs the recompute.
    spec = HEADS["all"]
    hidden, weight = _inputs(torch.float32)
    bias = _bias(torch.float32)
    labels = _labels()
    ref, leaves = _processed_reference(hidden, weight, bias, labels, 0.8, spec["logit_scale"], spec["softcap"])
    want = dict(zip(("hidden", "weight", "bias"), torch.autograd.grad(_loss(ref, False), leaves)))
    h = hidden.detach().requires_grad_(need == "hidden")
    w = weight.detach().requires_grad_(need == "weight")
    b = bias.detach().requires_grad_(need == "bias")
    stats = K.linear_token_stats(h, w, labels, temperature=0.8, backend=backend, bias=b,
                                 logit_scale=spec["logit_scale"], softcap=spec["softcap"])
    (grad,) = torch.autograd.grad(_loss(stats, False), ({"hidden": h, "weight": w, "bias": b}[need],))
    _close(grad, want[need], 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logit_processing_without_grad(backend: str) -> None:
    spec = HEADS["all"]
    hidden, weight = _inputs(torch.float32)
    bias = _bias(torch.float32)
    labels = _labels()
    ref, _ = _processed_reference(hidden, weight, bias, labels, 0.7, spec["logit_scale"], spec["softcap"])
    with torch.no_grad():
        stats = K.linear_token_stats(hidden, weight, labels, temperature=0.7, entropy=True, backend=backend,
                                     bias=bias, logit_scale=spec["logit_scale"], softcap=spec["softcap"])
    assert stats.logprobs.grad_fn is None and stats.entropy is not None
    _close(stats.logprobs, ref.logprobs, 1e-5)
    _close(stats.entropy, ref.entropy, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logit_processing_gradcheck_float64(backend: str) -> None:
    b, t, v, d = 2, 3, 19, 5
    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(b, t, d, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, d, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(v, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, v, (b, t), generator=gen)
    labels[1, 0] = IGNORE

    def fn(h: torch.Tensor, w: torch.Tensor, bb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = K.linear_token_stats(h, w, labels, temperature=0.8, entropy=True, backend=backend,
                                 bias=bb, logit_scale=0.7, softcap=1.5)
        assert s.entropy is not None
        return s.logprobs, s.entropy, s.sum, s.mean

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias), fast_mode=backend == "triton")


def test_logit_processing_defaults_are_the_plain_head() -> None:
    hidden, weight = _inputs(torch.float32)
    labels = _labels()
    plain = K.linear_token_logprobs(hidden, weight, labels, backend="torch")
    explicit = K.linear_token_logprobs(hidden, weight, labels, backend="torch", bias=None, logit_scale=1.0,
                                       softcap=None)
    _close(explicit, plain, 0.0)
    zero_bias = K.linear_token_logprobs(hidden, weight, labels, backend="torch",
                                        bias=torch.zeros(V))
    _close(zero_bias, plain, 1e-6)


def test_logit_processing_rejects_bad_arguments() -> None:
    hidden, weight = _inputs(torch.float32)
    labels = _labels()
    with pytest.raises(ValueError, match=r"bias must be a floating-point \(V,\) tensor"):
        K.linear_token_logprobs(hidden, weight, labels, bias=torch.zeros(V - 1))
    with pytest.raises(ValueError, match="bias must be"):
        K.linear_token_stats(hidden, weight, labels, bias=torch.zeros(V, dtype=torch.long))
    with pytest.raises(ValueError, match="softcap must be"):
        K.linear_token_logprobs(hidden, weight, labels, softcap=0.0)
    with pytest.raises(ValueError, match="logit_scale must be"):
        K.linear_token_stats(hidden, weight, labels, logit_scale=float("inf"))
