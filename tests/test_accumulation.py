"""Per-device batch 8 x accumulation 1 trains exactly what batch 1 x accumulation 8 trains.

The loop weights each micro-batch's loss by the objective's ``weight()`` (target tokens for SFT,
pairs for DPO and reward models) so that the accumulated gradient is the full batch's mean.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from alignkit.metrics import read_metrics

SGD = ["trainer.max_steps=2", "rollout.shuffle=false", "trainer.max_grad_norm=0", "data.eval_fraction=0",
       "trainer.optimizer._target_=torch.optim.SGD", "trainer.optimizer.lr=0.5", "~trainer.optimizer.weight_decay"]
METHODS = {
    "sft": ["method=sft", "data.format=prompt_completion"],
    "dpo": ["method=dpo", "data.format=pairwise"],
    "reward_model": ["method=reward_model", "data.format=pairwise"],
    # Composite losses: a pair loss plus an NLL over chosen tokens (different units, issue 16 class 1).
    "dpo_sft": ["method=dpo", "data.format=pairwise", "method.sft_weight=1"],
    "reward_model_lm": ["method=reward_model", "data.format=pairwise", "method.lm_weight=1"],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_batch_8_equals_batch_1_accumulated_8(alignkit_run, sft_file, pairs_file, tmp_path, method):
    data = sft_file if method == "sft" else pairs_file
    if method in ("dpo_sft", "reward_model_lm"):  # chosen answers of different lengths
        rows = [{"prompt": f"Question {i}?", "chosen": "Yes. " * (1 + i % 5), "rejected": f"No {i}."} for i in range(8)]
        data = tmp_path / "varied.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [*METHODS[method], "data=custom", f"data.path={data}", *SGD]
    big = alignkit_run(*common, "trainer.batch_size=8", "trainer.grad_accum=1", run_dir=tmp_path / "big")
    small = alignkit_run(*common, "trainer.batch_size=1", "trainer.grad_accum=8", run_dir=tmp_path / "small")
    a, b = load_file(str(big.final_model / "model.safetensors")), load_file(str(small.final_model / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)
    loss = lambda run: [r["loss"] for r in read_metrics(run) if r["split"] == "train"]  # noqa: E731
    assert loss(big.run_dir) == pytest.approx(loss(small.run_dir), abs=1e-5)
    assert len(loss(big.run_dir)) == 2 and all(math.isfinite(v) for v in loss(big.run_dir))
    assert loss(big.run_dir)[1] != loss(big.run_dir)[0], "the first step changed the weights"
