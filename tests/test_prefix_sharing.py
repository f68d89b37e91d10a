"""Group sampling prefills each repeated prompt once (alignkit.generation.generate_sharing_prompts), and
draws with one uniform per row (alignkit.generation.InverseCDFSampler)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignkit.generation import generate_sharing_prompts
from tiny import tiny_model_folder

# Three prompts of different lengths (left padding differs per row), each repeated, rows interleaved.
PROMPTS = [[5, 17, 99, 3, 42, 8, 250, 11, 7, 64, 31, 2, 90, 19],
           [300, 12, 77, 4, 4, 9],
           [61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71]]
ORDER = [0, 1, 2, 0, 1, 2, 2, 0, 1]


def _batch(order=ORDER):
    width = max(len(p) for p in PROMPTS)
    ids = torch.tensor([[0] * (width - len(PROMPTS[i])) + PROMPTS[i] for i in order])  # (N, P)
    mask = torch.tensor([[0] * (width - len(PROMPTS[i])) + [1] * len(PROMPTS[i]) for i in order])  # (N, P)
    return ids, mask


def _model(tmp_path, arch, **config):
    folder = tiny_model_folder(tmp_path / arch, arch, config=config or None)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("arch, config", [("llama", {}), ("gemma2", {"sliding_window": 8}), ("phi", {})])
def test_greedy_tokens_equal_plain_generate(tmp_path, arch, config):
    model = _model(tmp_path, arch, **config)
    ids, mask = _batch()
    kwargs = dict(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12, pad_token_id=0,
                  eos_token_id=None)
    shared = generate_sharing_prompts(model, **kwargs)
    plain = model.generate(**kwargs)
    assert torch.equal(shared, plain)
    assert torch.equal(shared[0], shared[3]) and torch.equal(shared[2], shared[6])  # repeats: same greedy answer


def test_first_sampled_distribution_is_the_prompts_own(tmp_path):
    """The scores the first token is drawn from equal a float64 forward of each row's unpadded prompt."""
    model = _model(tmp_path, "llama")
    ids, mask = _batch()
    out = generate_sharing_prompts(model, input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=3,
                                   pad_token_id=0, eos_token_id=None, top_k=0, top_p=1.0, output_scores=True,
                                   return_dict_in_generate=True)
    reference = _model(tmp_path, "llama").double()
    for row, prompt in enumerate(ORDER):
        with torch.no_grad():
            logits = reference(input_ids=torch.tensor([PROMPTS[prompt]])).logits[0, -1]  # (V,)
        torch.testing.assert_close(out.scores[0][row].double(), logits, atol=1e-5, rtol=1e-5)


def test_distinct_prompts_take_the_plain_path(tmp_path, monkeypatch):
    model = _model(tmp_path, "llama")
    ids, mask = _batch([0, 1, 2])
    calls = []
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(k) or (_ for _ in ()).throw(AssertionError))
    monkeypatch.setattr(model, "generate", lambda **k: "plain")
    assert generate_sharing_prompts(model, input_ids=ids, attention_mask=mask) == "plain" and not calls


def test_the_inverse_cdf_draw_follows_softmax_and_never_takes_an_impossible_token():
    """20,000 draws from one processed distribution: frequencies within 4 standard errors of softmax
    (computed here in float64), and a −inf token (top-k's cut) never drawn."""
    from alignkit.generation import InverseCDFSampler

    scores = torch.tensor([2.0, 0.5, -math.inf, 1.0, -1.0, 0.0])  # (V,)
    expected = torch.softmax(scores.double(), dim=0)
    torch.manual_seed(0)
    out = InverseCDFSampler()(None, scores.repeat(20_000, 1))  # (N, V)
    assert bool(((out == 0).sum(dim=1) == 1).all()) and bool(torch.isinf(out).sum(dim=1).eq(5).all())
    counts = (out == 0).sum(dim=0).double()  # (V,)
    assert counts[2] == 0
    frequency = counts / 20_000
    stderr = (expected * (1 - expected) / 20_000).sqrt()
    assert bool(((frequency - expected).abs() <= 4 * stderr + 1e-12).all()), (frequency, expected)


def test_the_two_level_draw_is_the_full_inverse_cdf():
    """Across block boundaries (V = 1,000, not a multiple of the block), the token drawn for each u is
    the first whose float64 cumulative probability exceeds u · Σp (a plain full-vocabulary cumsum)."""
    from alignkit.generation import InverseCDFSampler

    torch.manual_seed(1)
    scores = torch.randn(64, 1000) * 3  # (N, V)
    scores[:, 700:] = -math.inf  # whole blocks of impossible tokens at the end
    state = torch.get_rng_state()
    drawn = InverseCDFSampler()(None, scores).argmax(dim=-1)  # (N,)
    torch.set_rng_state(state)
    cdf = torch.softmax(scores, dim=-1).double().cumsum(dim=-1)  # (N, V)
    u = torch.rand(64, 1, dtype=torch.float64) * cdf[:, -1:]
    expected = torch.searchsorted(cdf, u, right=True)[:, 0]  # (N,)
    assert torch.equal(drawn, expected) and int(drawn.max()) < 700
