"""Checkpoints: atomic layout, exact resume, damaged checkpoints skipped, round trip through transformers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from alignkit.checkpoint import latest_valid, list_checkpoints, load_state, verify
from alignkit.errors import CheckpointError
from alignkit.metrics import read_metrics


@pytest.fixture
def common(sft_file):
    return ["method=sft", "data=custom", f"data.path={sft_file}", "data.format=prompt_completion",
            "data.eval_fraction=0.2", "trainer.batch_size=2", "trainer.save_every=2", "trainer.keep_last=3",
            "trainer.optimizer.lr=1e-3"]


def weights(run_dir):
    return load_file(str(run_dir / "final" / "model.safetensors"))


def test_checkpoint_layout_and_manifest(alignkit_run, common, tmp_path):
    result = alignkit_run(*common, "trainer.max_steps=4", run_dir=tmp_path / "run")
    names = [p.name for p in list_checkpoints(result.run_dir)]
    assert names == ["step-000002", "step-000004"]
    manifest = verify(result.run_dir / "checkpoints" / "step-000004")
    assert manifest["step"] == 4 and manifest["method"] == "sft" and manifest["model"] == "tiny"
    assert "model/model.safetensors" in manifest["files"] and "trainer_state.pt" in manifest["files"]
    state = load_state(result.run_dir / "checkpoints" / "step-000004")
    assert state["step"] == 4 and state["rollout"]["index"] >= 1
    assert not list(result.run_dir.glob("checkpoints/.*")), "no temporary folders left behind"
    assert {"config.yaml", "plugins.json", "metrics.jsonl", "summary.json", "final"} <= {p.name for p in result.run_dir.iterdir()}


def test_resume_continues_exactly(alignkit_run, common, tmp_path):
    # A constant schedule: the cut run stops at max_steps=2, and a cosine schedule depends on max_steps.
    common = [*common, "trainer.scheduler.name=constant"]
    straight = alignkit_run(*common, "trainer.max_steps=6", run_dir=tmp_path / "straight")
    alignkit_run(*common, "trainer.max_steps=2", run_dir=tmp_path / "cut")
    resumed = alignkit_run(*common, "trainer.max_steps=6", f"resume={tmp_path / 'cut'}", run_dir=tmp_path / "cut")
    a, b = weights(straight.run_dir), weights(resumed.run_dir)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    train = lambda run: [(r["step"], r["loss"]) for r in read_metrics(run) if r["split"] == "train"]  # noqa: E731
    assert train(straight.run_dir) == train(resumed.run_dir)


def test_damaged_checkpoint_is_skipped_with_a_message(alignkit_run, common, tmp_path):
    result = alignkit_run(*common, "trainer.max_steps=4", run_dir=tmp_path / "run")
    newest = result.run_dir / "checkpoints" / "step-000004" / "trainer_state.pt"
    newest.write_bytes(newest.read_bytes()[:-10] + b"0123456789")
    with pytest.warns(RuntimeWarning, match="step-000004: trainer_state.pt does not match its checksum"):
        checkpoint, manifest = latest_valid(result.run_dir)
    assert manifest["step"] == 2 and checkpoint.name == "step-000002"


def test_resume_refuses_another_model_or_a_run_without_checkpoints(alignkit_run, common, tmp_path):
    alignkit_run(*common, "trainer.max_steps=2", run_dir=tmp_path / "run")
    with pytest.raises(CheckpointError, match="that run trained model 'tiny', this one asks for 'other'"):
        alignkit_run(*common, "trainer.max_steps=4", "model.name=other", f"resume={tmp_path / 'run'}", run_dir=tmp_path / "run")
    with pytest.raises(CheckpointError, match="no such run folder"):
        alignkit_run(*common, f"resume={tmp_path / 'missing'}", run_dir=tmp_path / "x")


def test_final_model_reloads_in_transformers_with_identical_logits(alignkit_run, common, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.loop import Trainer  # noqa: F401 - the run below used it

    result = alignkit_run(*common, "trainer.max_steps=2", run_dir=tmp_path / "run")
    model = AutoModelForCausalLM.from_pretrained(str(result.final_model)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(result.final_model))
    assert tokenizer.chat_template
    reloaded = AutoModelForCausalLM.from_pretrained(str(result.run_dir / "checkpoints" / "step-000002" / "model")).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["eval_before"]["nll"] > 0


def test_resume_drops_the_replayed_steps_from_tensorboard(alignkit_run, common, tmp_path):
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # The first run logs steps 1-4 and its held-out "after" line at step 4; with its step-4 checkpoint
    # gone (a kill inside that write) it resumes from step 2 and logs steps 3-4 again. TensorBoard must
    # then show what metrics.jsonl shows: each step once, the resumed run's values.
    common = [*common, "trainer.tensorboard=true"]
    alignkit_run(*common, "trainer.max_steps=4", run_dir=tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-000004")
    resumed = alignkit_run(*common, "trainer.max_steps=5", f"resume={tmp_path / 'run'}", run_dir=tmp_path / "run")
    assert len(list((resumed.run_dir / "tensorboard").rglob("events.out.tfevents.*"))) == 2
    events = EventAccumulator(str(resumed.run_dir / "tensorboard")).Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    expected = [(r["step"], r["loss"]) for r in read_metrics(resumed.run_dir) if r["split"] == "train"]
    assert [step for step, _ in logged] == [step for step, _ in expected] == [1, 2, 3, 4, 5]
    assert [value for _, value in logged] == pytest.approx([value for _, value in expected], abs=1e-6)
    assert [e.step for e in events.Scalars("eval/nll")] == [0, 5]
