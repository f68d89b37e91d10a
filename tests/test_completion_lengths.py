"""``rollout.mask_truncated`` masks a cut completion's labels (it leaves the loss), not its length: every
metric and scorer that describes the completions themselves (the logged ``length`` of every online
method, the held-out length, DAPO's over-length penalty) counts the tokens as sampled. Before, they
counted target tokens, so a cut completion read as 0 tokens long and escaped the over-length penalty.

Expected lengths come from the token rows (non-padding positions after the encoded prompt), never from
the batch's own length field.
"""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.step_metrics import metric_float


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(12)))
    return path


def _trainer(alignkit_compose, prompts_file, run, method, *extra):
    from alignkit.loop import Trainer

    cfg = alignkit_compose(f"method={method}", "data=custom", f"data.path={prompts_file}", "data.format=prompts",
                           "data.eval_fraction=0.25", "trainer.batch_size=4", "rollout.num_samples=4",
                           "rollout.max_new_tokens=8", "rollout.stop=[k]",  # some completions stop, some are cut
                           "scorer=overlong", "scorer.buffer=4", "trainer.progress=false", "trainer.tensorboard=false", *extra)
    return Trainer(cfg, run)


def _sampled_lengths(trainer, batch):
    """(N,) tokens after each row's encoded prompt: the token rows, not the batch's length field."""
    prompt = torch.tensor([len(trainer.rollout.train[int(i)]["prompt_ids"]) for i in batch.index])  # (N,)
    return (batch.attention_mask.sum(dim=1).cpu() - prompt).float()  # (N,)


@pytest.mark.parametrize("method", ["grpo", "ppo", "reinforce"])
def test_a_cut_completion_keeps_its_length_when_it_leaves_the_loss(alignkit_compose, prompts_file, tmp_path, method):
    seen = {}
    for masked in ("false", "true"):
        torch.manual_seed(0)
        trainer = _trainer(alignkit_compose, prompts_file, tmp_path / f"{method}-{masked}", method,
                           f"rollout.mask_truncated={masked}")
        raw = trainer.rollout.next_batch(trainer.policy).to(trainer.run.accelerator.device)
        cut = raw.ended == 0
        assert cut.any() and (~cut).any(), "the draw has cut and stopped completions"
        lengths = _sampled_lengths(trainer, raw)
        assert torch.equal(raw.completion_lengths(), lengths)
        assert not raw.response_mask()[cut].any() if masked == "true" else raw.response_mask()[cut].any(dim=1).all()
        scored = raw.with_rewards(trainer.run.scorer(raw))
        # DAPO's soft penalty by hand: 0 up to 8 - 4 tokens, then down to -1 at 8
        expected = torch.where(lengths <= 4, torch.zeros_like(lengths), (4 - lengths) / 4)
        assert torch.allclose(scored.rewards.float(), expected, atol=1e-6)
        plan = trainer.objective.updates(scored)
        out = trainer.objective(plan.micro_batches()[0])
        seen[masked] = metric_float(out.metrics["length"])
        assert seen[masked] == pytest.approx(float(lengths.mean()), abs=1e-5)
    assert seen["true"] == seen["false"]
