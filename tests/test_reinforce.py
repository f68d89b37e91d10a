"""REINFORCE / RLOO: grouping of k samples, baselines, KL modes, smoke runs and exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from alignkit.errors import ConfigError
from alignkit.metrics import read_metrics
from alignkit.rl import rloo_advantages

REWARD = "scorer.fn=alignkit.plugins.scorers.rewards:brevity"


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Explain idea {i} at length."}) + "\n" for i in range(12)))
    return path


def common(prompts_file, *extra):
    return ["method=reinforce", "data=custom", f"data.path={prompts_file}", "data.format=prompts",
            "data.eval_fraction=0.25", "scorer=function", REWARD, "trainer.batch_size=2", "rollout.num_samples=3",
            "rollout.max_new_tokens=6", "trainer.optimizer.lr=1e-3", *extra]


def test_rloo_groups_the_k_samples_of_each_prompt(alignkit_compose, prompts_file, tmp_path):
    from alignkit.loop import Trainer

    trainer = Trainer(alignkit_compose(*common(prompts_file)), tmp_path / "run")
    batch = trainer.rollout.next_batch(trainer.policy).to(trainer.run.accelerator.device)
    assert batch.group.tolist() == [0, 0, 0, 1, 1, 1]
    batch = batch.with_rewards(torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0]))
    (mb,) = trainer.objective.updates(batch).micro_batches()
    # Prompt 0: 1 − (2+6)/2 = −3, 2 − (1+6)/2 = −1.5, 6 − (1+2)/2 = 4.5; prompt 1: −1.5, −1.5, 3.
    assert mb.extras["advantages"].tolist() == pytest.approx([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])
    assert torch.equal(mb.extras["advantages"], rloo_advantages(batch.rewards.view(2, 3)).reshape(-1))


def test_minibatches_hold_whole_prompts(alignkit_compose, prompts_file, tmp_path):
    from alignkit.loop import Trainer

    trainer = Trainer(alignkit_compose(*common(prompts_file, "method.minibatch_size=1", "method.kl_mode=reward")),
                      tmp_path / "run")
    batch = trainer.rollout.next_batch(trainer.policy).to(trainer.run.accelerator.device)
    batch = batch.with_rewards(torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0]))
    first, second = trainer.objective.updates(batch).micro_batches()
    assert first.group.tolist() == [0, 0, 0] and second.group.tolist() == [1, 1, 1]
    # kl_mode=reward: advantages come from r − β·KL, computed on the whole rollout first.
    assert torch.allclose(torch.cat([first.extras["total_rewards"], second.extras["total_rewards"]]),
                          batch.rewards - 0.05 * torch.cat([first.extras["kl_seq"], second.extras["kl_seq"]]))
    assert torch.equal(trainer.objective(first).loss.isfinite(), torch.tensor(True))


@pytest.mark.parametrize("baseline", ["rloo", "group_norm"])
def test_group_baselines_need_two_samples(alignkit_run, prompts_file, baseline):
    with pytest.raises(ConfigError, match=f"method.baseline={baseline} .* set rollout.num_samples >= 2"):
        alignkit_run(*common(prompts_file, f"method.baseline={baseline}", "rollout.num_samples=1"))


def test_moving_average_baseline_uses_the_previous_value(alignkit_compose, prompts_file, tmp_path):
    from alignkit.loop import Trainer

    trainer = Trainer(alignkit_compose(*common(prompts_file, "method.baseline=moving_average",
                                               "method.baseline_decay=0.5", "rollout.num_samples=1")), tmp_path / "r")
    objective = trainer.objective
    assert objective._advantages(torch.tensor([2.0, 4.0]), 2).tolist() == [2.0, 4.0]  # b = 0 before
    assert objective.baseline_value.item() == pytest.approx(1.5)  # 0.5 · 0 + 0.5 · 3
    assert objective._advantages(torch.tensor([1.0, 1.0]), 2).tolist() == [-0.5, -0.5]
    assert objective.state_dict()["baseline"].item() == pytest.approx(1.25)


def test_two_step_smoke_run_via_cli(cli, prompts_file, tmp_path):
    result = cli("train", *common(prompts_file, "model=tiny", "trainer.max_steps=2", "trainer.progress=false",
                                  "trainer.tensorboard=false", f"hydra.run.dir={tmp_path / 'run'}"))
    assert result.returncode == 0, result
    assert "held-out before" in result.stdout and "kl=" in result.stdout
    train = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2] and all("kl" in r and "score" in r for r in train)


def test_resume_samples_and_trains_exactly_as_without_stopping(alignkit_run, prompts_file, tmp_path):
    """Checkpoints hold the rollout's sampling stream and prompt position (and the baseline state)."""
    args = common(prompts_file, "trainer.save_every=2", "trainer.scheduler.name=constant",
                  "method.baseline=moving_average", "rollout.num_samples=2")
    straight = alignkit_run(*args, "trainer.max_steps=4", run_dir=tmp_path / "straight")
    alignkit_run(*args, "trainer.max_steps=2", run_dir=tmp_path / "cut")
    resumed = alignkit_run(*args, "trainer.max_steps=4", f"resume={tmp_path / 'cut'}", run_dir=tmp_path / "cut")
    a = load_file(str(straight.final_model / "model.safetensors"))
    b = load_file(str(resumed.final_model / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    train = lambda run: [(r["step"], r["loss"], r["score"]) for r in read_metrics(run) if r["split"] == "train"]  # noqa: E731
    assert train(straight.run_dir) == train(resumed.run_dir)
    assert straight.eval_after == resumed.eval_after
