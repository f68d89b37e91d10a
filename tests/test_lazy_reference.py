"""DPO's cached reference scores only what the run uses (issue 20, item 5).

Before the first update only the training batches ``trainer.max_steps`` draws are scored (not the
whole dataset); held-out values come from the evaluation before training itself. The values are
those of the initial model on the very batches training sees (checked against a plain
transformers forward in float64), step 0 is exactly ln 2, and a resume to more steps — with its
cache, or without it — scores the rest from the reloaded initial weights, bit-identical to a run
that asked for the larger number of steps from the start.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.metrics import read_metrics
from alignkit.reference import CACHE_FILE
from alignkit.testing import TINY_DEFAULTS, compose_run_config

LN2_FP32 = float(torch.tensor(math.log(2.0), dtype=torch.float32))
#: 24 pairs, a quarter held out: 18 training pairs in 6 batches of 3, 6 held-out pairs in 2 batches.
ARGS = ["method=dpo", "method.reference=cached", "data=custom", "data.eval_fraction=0.25", "trainer.batch_size=3",
        "trainer.eval_batch_size=4", "trainer.optimizer.lr=1e-3", "trainer.scheduler.name=constant"]


def reference_sums(model: torch.nn.Module, batch) -> torch.Tensor:
    """(2P,) summed log-probs of the batch's labels: the model's full logits, log-softmax in float64."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
    labels = batch.labels[:, 1:]  # (R, T-1)
    logp = logits[:, :-1].log_softmax(-1).gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)  # (R, T-1)
    return (logp * (labels != -100)).sum(dim=1)  # (R,)


def per_example(batch, sums: torch.Tensor) -> torch.Tensor:
    return torch.stack([batch.chosen(sums), batch.rejected(sums)], dim=1)  # (P, 2)


@pytest.fixture
def counted(monkeypatch):
    """How many batches the reference cache scores itself (the policy's own forwards not counted)."""
    import alignkit.reference as reference

    calls = []
    original = reference.sequence_logprobs

    def counting(model, batch, **kwargs):
        calls.append(batch.index.tolist())
        return original(model, batch, **kwargs)

    monkeypatch.setattr(reference, "sequence_logprobs", counting)
    return calls


def test_only_the_batches_max_steps_draws_are_scored(pairs_file, tmp_path, counted):
    from alignkit.loop import Trainer
    from alignkit.models import load_model

    cfg = compose_run_config(*ARGS, f"data.path={pairs_file}", "trainer.max_steps=2")
    run = tmp_path / "run"
    trainer = Trainer(cfg, run)
    rollout = trainer.rollout
    planned = list(rollout.all_batches("train"))[:2]
    assert counted == [b.index.tolist() for b in planned], "two training batches scored, nothing else"
    cache = load_file(str(run / CACHE_FILE))
    assert cache["train"].shape == (18, 2) and cache["eval"].shape == (6, 2)
    scored = torch.cat([b.index for b in planned])
    assert sorted(torch.nonzero(~cache["train"].isnan().any(dim=1)).squeeze(1).tolist()) == sorted(scored.tolist())
    assert bool(cache["eval"].isnan().all()), "held-out values wait for the evaluation"

    initial = load_model(cfg.model)[0].eval()  # the same seeded initial weights, loaded independently
    for batch in planned:
        torch.testing.assert_close(cache["train"][batch.index].double(), per_example(batch, reference_sums(initial, batch)),
                                   atol=1e-5, rtol=0)

    result = trainer.fit()
    assert next(r["loss"] for r in read_metrics(run) if r["split"] == "train") == LN2_FP32
    assert result.eval_before["loss"] == pytest.approx(math.log(2), abs=1e-7) and result.eval_before["margin"] == 0.0
    assert len(counted) == 2, "the held-out values came from the evaluation's own forward"
    cache = load_file(str(run / CACHE_FILE))
    assert not bool(cache["eval"].isnan().any())
    for batch in rollout.eval_batches():
        torch.testing.assert_close(cache["eval"][batch.index].double(), per_example(batch, reference_sums(initial, batch)),
                                   atol=1e-5, rtol=0)


def test_a_batch_met_after_training_started_is_scored_by_the_initial_weights(pairs_file, tmp_path, counted):
    from alignkit.loop import Trainer
    from alignkit.models import load_model

    cfg = compose_run_config(*ARGS, f"data.path={pairs_file}", "trainer.max_steps=1")
    trainer = Trainer(cfg, tmp_path / "run")
    reference = trainer.objective.reference
    unplanned = list(trainer.rollout.all_batches("train"))[4]
    assert bool(reference.cache["train"][unplanned.index].isnan().all())
    with torch.no_grad():  # an update: the policy is no longer the initial one
        next(trainer.policy.parameters()).add_(0.5)
    looked_up = reference(unplanned, "train")  # (2P,)
    initial = load_model(cfg.model)[0].eval()
    torch.testing.assert_close(looked_up.double(), reference_sums(initial, unplanned), atol=1e-5, rtol=0)
    assert counted[-1] == unplanned.index.tolist()


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next((run / "final").glob("*.safetensors"))))


@pytest.mark.parametrize("cache", ["kept", "deleted"])
def test_resume_to_more_steps_is_bit_identical_to_asking_for_them(cli_main, pairs_file, tmp_path, monkeypatch, cache):
    monkeypatch.chdir(tmp_path)
    common = [*TINY_DEFAULTS, *ARGS, f"data.path={pairs_file}", "trainer.save_every=1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    code, _, err = cli_main("train", *common, "trainer.max_steps=4", f"hydra.run.dir={straight}")
    assert code == 0, err
    code, _, err = cli_main("train", *common, "trainer.max_steps=2", f"hydra.run.dir={resumed}")
    assert code == 0, err
    partial = load_file(str(resumed / CACHE_FILE))["train"]
    assert int((~partial.isnan().any(dim=1)).sum()) == 6, "two steps scored their two batches of 3 pairs"
    if cache == "deleted":
        (resumed / CACHE_FILE).unlink()
    code, out, err = cli_main("train", f"resume={resumed}", "trainer.max_steps=4")
    assert code == 0, err
    assert "reference log-probs: loading the initial weights of model=tiny for examples the cache lacks" in out

    for split in ("train", "eval"):
        a, b = load_file(str(straight / CACHE_FILE))[split], load_file(str(resumed / CACHE_FILE))[split]
        torch.testing.assert_close(b, a, rtol=0, atol=0, equal_nan=True, msg=split)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda run: [(r["step"], r["split"], r["loss"]) for r in read_metrics(run)]  # noqa: E731
    assert losses(resumed) == losses(straight)
