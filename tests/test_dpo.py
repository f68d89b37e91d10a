"""method=dpo on the tiny model: ln 2 at step 0 in both reference modes, the cache really used, loss variants."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from alignkit.errors import ConfigError
from alignkit.metrics import read_metrics
from alignkit.reference import CACHE_FILE

LN2_FP32 = float(torch.tensor(math.log(2.0), dtype=torch.float32))


@pytest.fixture
def dpo_args(pairs_file):
    return ["method=dpo", "data=custom", f"data.path={pairs_file}", "data.format=pairwise", "data.eval_fraction=0.25",
            "trainer.batch_size=3", "trainer.eval_batch_size=4", "trainer.optimizer.lr=1e-3"]


def first_train_loss(run_dir) -> float:
    return next(r["loss"] for r in read_metrics(run_dir) if r["split"] == "train")


@pytest.mark.parametrize("mode", ["model", "cached"])
def test_loss_at_step_zero_is_exactly_ln2(alignkit_run, dpo_args, mode, tmp_path):
    result = alignkit_run(*dpo_args, f"method.reference={mode}", "trainer.max_steps=2", run_dir=tmp_path / mode)
    assert first_train_loss(result.run_dir) == LN2_FP32
    assert result.eval_before["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert result.eval_before["margin"] == 0.0 and result.eval_before["accuracy"] == 0.5
    assert result.eval_after["margin"] != 0.0
    assert (result.run_dir / CACHE_FILE).exists() == (mode == "cached")


def test_cache_is_really_used_and_no_reference_model_is_kept(dpo_args, tmp_path):
    from alignkit.loop import Trainer
    from alignkit.testing import compose_run_config

    run_dir = tmp_path / "run"
    cfg = compose_run_config(*dpo_args, "method.reference=cached", "trainer.max_steps=1")
    trainer = Trainer(cfg, run_dir)
    assert trainer.run.ctx._reference is None, "cached mode must not hold a reference model"
    cache = load_file(str(run_dir / CACHE_FILE))
    assert cache["train"].shape == (18, 2) and cache["eval"].shape == (6, 2)
    # Shift every cached chosen log-prob by -1: if the cache is read, step 0 is no longer a tie.
    from safetensors import safe_open

    with safe_open(str(run_dir / CACHE_FILE), "pt") as handle:
        metadata = handle.metadata()
    save_file({"train": cache["train"] - torch.tensor([1.0, 0.0]), "eval": cache["eval"]}, str(run_dir / CACHE_FILE), metadata)
    Trainer(cfg, run_dir).fit()
    beta = cfg.method.beta
    expected = -torch.nn.functional.logsigmoid(torch.tensor(beta * 1.0)).item()  # h = +1 for every pair
    assert first_train_loss(run_dir) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("loss", ["ipo", "cdpo", "robust"])
def test_loss_variants_train(alignkit_run, dpo_args, loss, tmp_path):
    result = alignkit_run(*dpo_args, f"loss={loss}", "trainer.max_steps=2", run_dir=tmp_path / loss)
    assert math.isfinite(result.eval_after["loss"])


def test_reference_free_and_sft_term(alignkit_run, dpo_args, tmp_path):
    result = alignkit_run(*dpo_args, "method.reference=none", "method.sft_weight=0.5", "trainer.max_steps=2",
                          run_dir=tmp_path / "free")
    rows = [r for r in read_metrics(result.run_dir) if r["split"] == "train"]
    assert "sft_nll" in rows[0] and rows[0]["loss"] > LN2_FP32  # reference-free: the margin is not 0 at init


def test_bad_loss_options_fail_with_the_key(dpo_args):
    from alignkit.testing import compose_run_config

    with pytest.raises(ConfigError, match="loss.tau"):
        compose_run_config(*dpo_args, "loss.tau=0.5")
    with pytest.raises(ConfigError, match="unknown loss 'nope'"):
        compose_run_config(*dpo_args, "loss=nope")
