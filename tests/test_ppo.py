"""PPO: the ratio of the first update is exactly 1, the KL controller, and smoke runs on model=tiny."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.metrics import read_metrics
from alignkit.step_metrics import metric_float
from alignkit.plugins.ppo.kl_control import KLController
from alignkit.plugins.ppo.objective import last_token_index
from alignkit.rl import response_mask

REWARD = "scorer.fn=alignkit.plugins.scorers.rewards:brevity"


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Tell me about item {i}."}) + "\n" for i in range(12)))
    return path


def common(prompts_file, *extra):
    return ["method=ppo", "data=custom", f"data.path={prompts_file}", "data.format=prompts",
            "data.eval_fraction=0.25", "scorer=function", REWARD, "trainer.batch_size=2", "rollout.num_samples=2",
            "rollout.max_new_tokens=6", "trainer.optimizer.lr=1e-3", *extra]


def test_last_token_index():
    mask = torch.tensor([[False, True, True, False], [True, False, False, False], [False, False, False, True]])
    assert last_token_index(mask).tolist() == [2, 0, 3]


def test_adaptive_kl_controller_hand_computed():
    fixed = KLController(0.1)
    fixed.update(5.0, 100)
    assert fixed.value == 0.1
    adaptive = KLController(0.1, target=1.0, horizon=1000)
    adaptive.update(1.5, 100)  # e = clip(0.5, ±0.2) = 0.2 -> β = 0.1 · (1 + 0.2 · 0.1) = 0.102
    assert adaptive.value == pytest.approx(0.102)
    adaptive.update(0.9, 100)  # e = −0.1 -> β = 0.102 · (1 − 0.01)
    assert adaptive.value == pytest.approx(0.102 * 0.99)


@pytest.mark.parametrize("critic, minibatch", [("shared", 0), ("separate", 2)])
def test_ratio_is_exactly_one_at_the_first_update(alignkit_compose, prompts_file, tmp_path, critic, minibatch):
    """Old log-probs come from the training path at the sampling temperature, on the same minibatches."""
    from alignkit.loop import Trainer

    cfg = alignkit_compose(*common(prompts_file, f"method.critic={critic}", f"method.minibatch_size={minibatch}",
                                   "rollout.temperature=0.7"))
    trainer = Trainer(cfg, tmp_path / "run")
    raw = trainer.rollout.next_batch(trainer.policy).to(trainer.run.accelerator.device)
    raw = raw.with_rewards(trainer.run.scorer(raw))
    objective = trainer.objective
    first_epoch = objective.updates(raw).micro_batches()[: len(objective._chunks(raw.input_ids.shape[0]))]
    assert len(first_epoch) == (1 if minibatch == 0 else 2)
    for mb in first_epoch:  # no optimizer step in between: every first-epoch minibatch has ratio 1
        out = objective(mb)
        assert metric_float(out.metrics["ratio_mean"]) == 1.0
        assert metric_float(out.metrics["approx_kl"]) == 0.0 and metric_float(out.metrics["clip_frac"]) == 0.0
        current = objective._forward(mb, entropy=False).logprobs
        assert torch.equal(current, mb.extras["old_logps"])
    # At temperature 1 the log-probs would differ: the recomputation really uses the sampling temperature.
    hot = trainer.objective.critic(trainer.policy, first_epoch[0], temperature=1.0, entropy=False).logprobs
    assert not torch.allclose(hot[response_mask(first_epoch[0])], first_epoch[0].extras["old_logps"][response_mask(first_epoch[0])])


def test_two_step_smoke_run(alignkit_run, prompts_file, tmp_path):
    result = alignkit_run(*common(prompts_file, "trainer.max_steps=2", "method.ppo_epochs=2",
                                  "method.value_lr=1e-2", "method.kl_target=1.0"), run_dir=tmp_path / "run")
    train = [r for r in read_metrics(result.run_dir) if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    for key in ("loss", "pg_loss", "value_loss", "entropy", "kl", "kl_coef", "ratio_mean", "clip_frac", "score"):
        assert key in train[0], key
    assert train[0]["ratio_mean"] == 1.0  # the first update of the first rollout
    assert {"reward", "kl", "length"} <= set(result.eval_after)
    assert (result.final_model / "critic.safetensors").exists()
    samples = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert {s["eval_round"] for s in samples} == {0, 1} and all("completion" in s for s in samples)


def test_value_lr_is_its_own_param_group(alignkit_compose, prompts_file, tmp_path):
    from alignkit.loop import Trainer

    trainer = Trainer(alignkit_compose(*common(prompts_file, "method.value_lr=0.05")), tmp_path / "run")
    groups = trainer.run.optimizer.param_groups
    assert len(groups) == 2 and groups[1]["lr"] == 0.05 and groups[0]["lr"] == 1e-3
    head = list(trainer.objective.critic.parameters())
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in head]


def test_ppo_needs_a_sampling_rollout(alignkit_run, prompts_file):
    from alignkit.errors import ConfigError

    with pytest.raises(ConfigError, match="method=ppo trains on sampled completions; use rollout=generate"):
        alignkit_run(*[a for a in common(prompts_file) if not a.startswith("rollout.")], "rollout=dataset")


def test_resume_restores_critic_kl_coefficient_and_sampling(alignkit_run, prompts_file, tmp_path):
    """Two updates per rollout (2 epochs x 1 minibatch); the checkpoint at step 3 falls between the two
    updates of the second rollout, which the resumed run finishes before sampling the third."""
    from safetensors.torch import load_file

    args = common(prompts_file, "method.ppo_epochs=2", "method.kl_target=0.5", "method.value_lr=1e-2",
                  "trainer.save_every=3", "trainer.scheduler.name=constant")
    straight = alignkit_run(*args, "trainer.max_steps=4", run_dir=tmp_path / "straight")
    alignkit_run(*args, "trainer.max_steps=3", run_dir=tmp_path / "cut")
    from alignkit.checkpoint import load_state

    state = load_state(tmp_path / "cut" / "checkpoints" / "step-000003")
    assert len(state["pending"]["rows"]) == 1, "one update of the rollout is left"
    resumed = alignkit_run(*args, "trainer.max_steps=4", f"resume={tmp_path / 'cut'}", run_dir=tmp_path / "cut")
    for name in ("model.safetensors", "critic.safetensors"):
        a, b = load_file(str(straight.final_model / name)), load_file(str(resumed.final_model / name))
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    rows = lambda run: [(r["step"], r["loss"], r["kl_coef"], r["score"]) for r in read_metrics(run) if r["split"] == "train"]  # noqa: E731
    assert rows(straight.run_dir) == rows(resumed.run_dir)
