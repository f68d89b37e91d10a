"""method=reward_model (bt / kwise / mse) on the tiny model, and scorer=reward_model reloading it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignkit.batches import RolloutBatch
from alignkit.errors import ConfigError, ModelError
from conftest import write_jsonl


@pytest.fixture
def rm_args(pairs_file):
    return ["method=reward_model", "data=custom", f"data.path={pairs_file}", "data.format=pairwise",
            "data.eval_fraction=0.25", "trainer.batch_size=3", "trainer.optimizer.lr=1e-3"]


def test_bradley_terry_trains_and_reloads_as_a_scorer(alignkit_run, rm_args, tmp_path):
    result = alignkit_run(*rm_args, "method.lm_weight=0.1", "loss.center_weight=0.01", "trainer.max_steps=3",
                          run_dir=tmp_path / "rm")
    final = result.final_model
    assert (final / "reward_head.safetensors").exists()
    assert json.loads((final / "reward_model.json").read_text())["attributes"] == ["reward"]
    assert result.eval_after["pairs"] == 6 and 0 <= result.eval_after["accuracy_ci_low"] <= result.eval_after["accuracy"]

    from alignkit.reward_models import RewardModelScorer, resolve_reward_folder

    scorer = RewardModelScorer(resolve_reward_folder(str(result.run_dir)), device=torch.device("cpu"))
    prompts = [[{"role": "user", "content": "Question 1: what is 1 plus 1?"}]] * 2
    rewards = scorer(RolloutBatch.from_texts(prompts, ["It is 2.", "I will not answer 1."]))
    assert rewards.shape == (2,) and torch.isfinite(rewards).all()
    # The same answer scores the same whatever it is batched with (padding does not leak in).
    alone = scorer.score_texts(prompts[:1], ["It is 2."])
    assert alone.item() == pytest.approx(rewards[0].item(), abs=1e-5)


def test_kwise_on_ranked_lists_of_different_lengths(alignkit_run, tmp_path):
    rows = [{"prompt": f"Rank answers {i}", "completions": [f"best {i}", f"good {i}", f"bad {i}", f"worst {i}"][: 2 + i % 3]}
            for i in range(16)]
    path = write_jsonl(tmp_path / "ranked.jsonl", rows)
    result = alignkit_run("method=reward_model", "loss=kwise", "data=custom", f"data.path={path}", "data.format=ranked",
                          "data.eval_fraction=0.25", "trainer.batch_size=4", "trainer.max_steps=2", run_dir=tmp_path / "k")
    assert math.isfinite(result.eval_after["loss"]) and result.eval_after["pairs"] == 4


def test_mse_on_attribute_scores_with_missing_values(alignkit_run, tmp_path):
    rows = [{"prompt": f"Say {i}", "completion": "x" * (1 + i), "scores": {"helpfulness": i % 5, "verbosity": None if i % 3 else 2}}
            for i in range(16)]
    path = write_jsonl(tmp_path / "scored.jsonl", rows)
    result = alignkit_run("method=reward_model", "loss=mse", "method.attributes=[helpfulness,verbosity]", "data=custom",
                          f"data.path={path}", "data.format=scored", "data.eval_fraction=0.25", "trainer.batch_size=4",
                          "trainer.max_steps=2", run_dir=tmp_path / "mse")
    assert math.isfinite(result.eval_after["loss"])
    assert json.loads((result.final_model / "reward_model.json").read_text())["attributes"] == ["helpfulness", "verbosity"]


def test_wrong_loss_and_missing_scorer_path(rm_args, tmp_path):
    from alignkit.loop import Trainer
    from alignkit.reward_models import resolve_reward_folder
    from alignkit.testing import compose_run_config

    with pytest.raises(ConfigError, match="loss=dpo is not a loss of family 'reward-model'"):
        Trainer(compose_run_config(*rm_args, "loss=dpo"), tmp_path / "x")
    with pytest.raises(ModelError, match="no reward_model.json"):
        resolve_reward_folder(str(tmp_path))


def test_frozen_trunk_trains_only_the_head(alignkit_run, rm_args, tmp_path):
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from alignkit.models import ModelConfig, load_model

    result = alignkit_run(*rm_args, "method.freeze_trunk=true", "trainer.max_steps=2", run_dir=tmp_path / "probe")
    initial = load_model(OmegaConf.merge(OmegaConf.structured(ModelConfig), {"source": "random"}))[0].state_dict()
    trained = load_file(str(result.final_model / "model.safetensors"))
    for key, value in trained.items():
        assert torch.equal(value, initial[key]), key
    head = load_file(str(result.final_model / "reward_head.safetensors"))
    assert head["linear.weight"].abs().sum() > 0
