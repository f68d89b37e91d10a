"""SFT: the loss masks prompt tokens, equals a hand computation, and accumulation is exact."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from alignkit.batches import TokenBatch
from alignkit.logprobs import sequence_logprobs
from alignkit.losses import nll
from alignkit.models import ModelConfig, load_model


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model(OmegaConf.merge(OmegaConf.structured(ModelConfig), {"source": "random"}))
    return model.eval(), tokenizer


def test_nll_hand_computed():
    # Two sequences: log-prob sums -2 (1 token) and -4 (3 tokens): NLL = (2 + 4) / (1 + 3) = 1.5.
    assert nll(torch.tensor([-2.0, -4.0]), torch.tensor([1, 3])).item() == pytest.approx(1.5, abs=1e-7)
    assert nll(torch.zeros(2), torch.zeros(2, dtype=torch.long)).item() == 0.0


def test_sequence_logprobs_score_only_completion_tokens(tiny):
    model, _ = tiny
    input_ids = torch.tensor([[5, 6, 7, 8, 9]])
    labels = torch.tensor([[-100, -100, 7, 8, -100]])  # prompt 5 6, completion 7 8, then padding
    attention = torch.ones_like(input_ids)
    stats = sequence_logprobs(model, TokenBatch(input_ids=input_ids, attention_mask=attention, labels=labels))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=input_ids, attention_mask=attention).logits.float(), -1)  # (1, 5, V)
    # Position t predicts token t+1: log p(7 | 5 6) is read at t=1, log p(8 | 5 6 7) at t=2.
    expected = logp[0, 1, 7] + logp[0, 2, 8]
    assert stats.count.tolist() == [2]
    assert stats.sum.item() == pytest.approx(expected.item(), abs=1e-5)
    assert stats.logprobs[0, 0].item() == 0.0 and stats.logprobs[0, 3].item() == 0.0
    assert nll(stats.sum, stats.count).item() == pytest.approx(-expected.item() / 2, abs=1e-5)


def test_loss_and_accumulation_are_token_weighted(alignkit_run, sft_file, tmp_path):
    """Batch 4 x accumulation 1 trains the same weights as batch 1 x accumulation 4."""
    common = ["method=sft", "data=custom", f"data.path={sft_file}", "data.format=prompt_completion",
              "data.eval_fraction=0", "trainer.max_steps=2", "rollout.shuffle=false", "trainer.max_grad_norm=0",
              "trainer.optimizer._target_=torch.optim.SGD", "trainer.optimizer.lr=0.5", "~trainer.optimizer.weight_decay"]
    big = alignkit_run(*common, "trainer.batch_size=4", "trainer.grad_accum=1", run_dir=tmp_path / "big")
    small = alignkit_run(*common, "trainer.batch_size=1", "trainer.grad_accum=4", run_dir=tmp_path / "small")
    from safetensors.torch import load_file

    a, b = load_file(str(big.final_model / "model.safetensors")), load_file(str(small.final_model / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)
    from alignkit.metrics import read_metrics

    loss_big = [r["loss"] for r in read_metrics(big.run_dir) if r["split"] == "train"]
    loss_small = [r["loss"] for r in read_metrics(small.run_dir) if r["split"] == "train"]
    assert loss_big == pytest.approx(loss_small, abs=1e-5)
    assert all(math.isfinite(v) for v in loss_big)
