"""method=grpo on model=tiny: the first ratio is exactly 1, μ passes over whole-prompt micro-batches, no
reference without a KL term, exact resume inside the μ passes, DAPO's dynamic sampling and overlong
masking, and every registered policy loss trains."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from alignkit.metrics import read_metrics
from alignkit.step_metrics import metric_float

# A checker that rewards completions by a property a random model varies on: length parity.
REWARD = "scorer.fn=alignkit.plugins.scorers.rewards:brevity"


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(12)))
    return path


def common(prompts_file, *extra):
    return ["method=grpo", "data=custom", f"data.path={prompts_file}", "data.format=prompts", "data.eval_fraction=0.25",
            "scorer=function", REWARD, "trainer.batch_size=2", "rollout.num_samples=3", "rollout.max_new_tokens=6",
            "trainer.optimizer.lr=1e-3", *extra]


def _first_plan(alignkit_compose, tmp_path, *overrides):
    from alignkit.loop import Trainer

    trainer = Trainer(alignkit_compose(*overrides), tmp_path / "run")
    raw = trainer.rollout.next_batch(trainer.policy).to(trainer.run.accelerator.device)
    raw = raw.with_rewards(trainer.run.scorer(raw))
    return trainer, raw, trainer.objective.updates(raw)


def test_the_first_pass_ratio_is_exactly_one_with_old_logprobs_recorded(alignkit_compose, prompts_file, tmp_path):
    trainer, raw, plan = _first_plan(alignkit_compose, tmp_path, *common(prompts_file, "method.num_iterations=2",
                                                                          "method.minibatch_size=1",
                                                                          "rollout.temperature=0.7"))
    assert len(plan.rows) == 2 * 2 and all(len(rows) == 3 for rows in plan.rows)  # μ=2 passes x 2 prompts
    assert [sorted(r.tolist()) for r in plan.rows[:2]] == [[0, 1, 2], [3, 4, 5]]  # whole prompts, in order
    from alignkit.api import sequence_logprobs

    for mb in plan.micro_batches()[:2]:  # no step in between: the whole first pass has ratio exactly 1
        current = sequence_logprobs(trainer.policy, mb, temperature=0.7).logprobs
        assert torch.equal(current, mb.extras["old_logps"])
        out = trainer.objective(mb)
        assert metric_float(out.metrics["ratio_mean"]) == 1.0 and metric_float(out.metrics["clip_frac"]) == 0.0


def test_one_iteration_needs_no_recorded_logprobs_and_no_reference(alignkit_compose, prompts_file, tmp_path):
    trainer, raw, plan = _first_plan(alignkit_compose, tmp_path, *common(prompts_file))
    assert set(plan.batch.extras) == {"advantages", "zero_signal"}  # π_old: the policy itself, detached
    out = trainer.objective(plan.micro_batches()[0])
    assert metric_float(out.metrics["ratio_mean"]) == 1.0 and set(out.terms) == {"policy_loss"}
    trainer.evaluate()
    assert trainer.run.ctx._reference is None, "kl_coef=0 must load no reference model"


def test_group_advantages_come_from_the_registered_estimator(alignkit_compose, prompts_file, tmp_path):
    from alignkit.rl import rloo_advantages

    trainer, raw, plan = _first_plan(alignkit_compose, tmp_path, *common(prompts_file, "method.advantage=rloo"))
    expected = rloo_advantages(raw.rewards.view(2, 3)).reshape(-1)
    assert torch.equal(plan.batch.extras["advantages"], expected)


def test_zero_signal_share_counts_the_groups_with_equal_rewards(alignkit_compose, prompts_file, tmp_path):
    trainer, raw, _ = _first_plan(alignkit_compose, tmp_path, *common(prompts_file))
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])  # prompt 0: no signal; prompt 1: signal
    plan = trainer.objective.updates(raw.with_rewards(rewards))
    out = trainer.objective(plan.micro_batches()[0])
    assert metric_float(out.metrics["zero_signal_share"]) == 0.5
    assert torch.equal(plan.batch.extras["advantages"][:3], torch.zeros(3))  # and it carries no gradient


def test_a_kl_term_loads_the_reference_and_is_logged(alignkit_run, prompts_file, tmp_path):
    result = alignkit_run(*common(prompts_file, "method.kl_coef=0.1", "trainer.max_steps=2"), run_dir=tmp_path / "kl")
    train = [r for r in read_metrics(result.run_dir) if r["split"] == "train"]
    assert "kl" in train[0] and "policy_loss" in train[0] and train[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert "kl" in result.eval_after


def test_resume_inside_the_iterations_is_bit_identical(alignkit_run, prompts_file, tmp_path):
    """μ=2 passes of 2 micro-batches = 4 updates per rollout; the checkpoint at step 3 falls inside the
    second pass of the first rollout, which the resumed run finishes before sampling again."""
    args = common(prompts_file, "method.num_iterations=2", "method.minibatch_size=1", "trainer.save_every=3",
                  "trainer.scheduler.name=constant")
    straight = alignkit_run(*args, "trainer.max_steps=5", run_dir=tmp_path / "straight")
    alignkit_run(*args, "trainer.max_steps=3", run_dir=tmp_path / "cut")
    from alignkit.checkpoint import load_state

    state = load_state(tmp_path / "cut" / "checkpoints" / "step-000003")
    assert len(state["pending"]["rows"]) == 1, "one update of the rollout is left"
    resumed = alignkit_run(*args, "trainer.max_steps=5", f"resume={tmp_path / 'cut'}", run_dir=tmp_path / "cut")
    a, b = load_file(str(straight.final_model / "model.safetensors")), load_file(str(resumed.final_model / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda run: [(r["step"], r["loss"], r["score"]) for r in read_metrics(run) if r["split"] == "train"]  # noqa: E731
    assert rows(straight.run_dir) == rows(resumed.run_dir)


@pytest.mark.parametrize("loss", ["grpo", "dapo", "dr_grpo", "gspo", "cispo"])
def test_every_policy_loss_trains(alignkit_run, prompts_file, tmp_path, loss):
    result = alignkit_run(*common(prompts_file, f"loss={loss}", "trainer.max_steps=1", "data.eval_fraction=0"),
                          run_dir=tmp_path / loss)
    first = next(r for r in read_metrics(result.run_dir) if r["split"] == "train")
    assert first["ratio_mean"] == 1.0 and torch.isfinite(torch.tensor(first["loss"]))


# ----------------------------------------------------------------------------- DAPO's rollout options
class _Scores:
    """Rewards by prompt: the first prompt of every rollout gets equal rewards (no signal)."""

    calls = 0

    @staticmethod
    def fn(prompts, completions):
        _Scores.calls += 1
        return [0.0 if i < 3 else float(i % 3) for i in range(len(completions))]


def test_dynamic_sampling_drops_zero_signal_groups_and_refills(alignkit_compose, prompts_file, tmp_path, monkeypatch):
    import sys
    import types

    from alignkit.loop import Trainer

    module = types.ModuleType("ak_grpo_scores")
    module.fn = _Scores.fn
    monkeypatch.setitem(sys.modules, "ak_grpo_scores", module)
    cfg = alignkit_compose(*common(prompts_file, "scorer.fn=ak_grpo_scores:fn", "rollout.dynamic_sampling=true",
                                   "rollout.max_refills=3"))
    trainer = Trainer(cfg, tmp_path / "run")
    batch = next(trainer._update_stream())
    # Each rollout of 2 prompts keeps 1 (its second prompt); one refill fills the batch back to 2 prompts.
    assert batch.num_prompts == 2 and batch.num_rows == 6 and batch.group.tolist() == [0, 0, 0, 1, 1, 1]
    assert (batch.rewards.view(2, 3) != batch.rewards.view(2, 3)[:, :1]).any(dim=1).all(), "every group has signal"
    stats = trainer.rollout.pop_stats()
    assert stats["rollout/refills"] == 1.0 and stats["rollout/zero_signal_share"] == 0.5
    assert stats["rollout/short_of_prompts"] == 0.0


class _LateScores:
    """No signal in the first rollout (every reward 0), signal in every later one."""

    calls = 0

    @staticmethod
    def fn(prompts, completions):
        _LateScores.calls += 1
        return [0.0 if _LateScores.calls == 1 else float(i % 3) for i in range(len(completions))]


def test_dynamic_sampling_refills_a_rollout_without_any_signal(alignkit_compose, prompts_file, tmp_path, monkeypatch):
    """A rollout whose groups all have equal rewards keeps nothing (it used to fail selecting no prompts);
    the refill fills the batch, and an empty sub-batch is a batch of no rows."""
    import sys
    import types

    from alignkit.loop import Trainer

    module = types.ModuleType("ak_grpo_late_scores")
    module.fn = _LateScores.fn
    monkeypatch.setitem(sys.modules, "ak_grpo_late_scores", module)
    cfg = alignkit_compose(*common(prompts_file, "scorer.fn=ak_grpo_late_scores:fn", "rollout.dynamic_sampling=true"))
    trainer = Trainer(cfg, tmp_path / "run")
    batch = next(trainer._update_stream())
    assert batch.num_prompts == 2 and batch.num_rows == 6 and _LateScores.calls == 2
    stats = trainer.rollout.pop_stats()
    assert stats["rollout/refills"] == 1.0 and stats["rollout/zero_signal_share"] == 0.5  # 2 of the 4 groups sampled
    empty = batch.select_prompts(torch.tensor([], dtype=torch.long))
    assert empty.num_rows == 0 and empty.input_ids.shape == (0, 1) and empty.num_prompts == 0


def test_mask_truncated_leaves_cut_completions_out_of_the_loss(alignkit_compose, prompts_file, tmp_path):
    from alignkit.loop import Trainer

    trainer = Trainer(alignkit_compose(*common(prompts_file, "rollout.mask_truncated=true", "rollout.max_new_tokens=3")),
                      tmp_path / "run")
    batch = trainer.rollout.next_batch(trainer.policy)
    cut = batch.ended == 0
    assert cut.any(), "a random tiny model runs to 3 tokens"
    assert not batch.response_mask()[cut].any() and batch.response_mask()[~cut].any(dim=1).all()
    assert trainer.rollout.pop_stats()["rollout/truncated_share"] == pytest.approx(float(cut.float().mean()))
