"""LoRA through PEFT: only adapters train, the reference is the base model (adapters disabled, no copy),
checkpoints hold adapters and resume exactly, the final model is merged and loads in transformers."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from alignkit.errors import ConfigError


@pytest.fixture
def lora_dpo(pairs_file):
    return ("method=dpo", "data=custom", f"data.path={pairs_file}", "data.format=pairwise", "method.reference=model",
            "model.lora.r=4", "model.lora.alpha=8", "trainer.batch_size=4", "trainer.optimizer.lr=1e-2",
            "trainer.scheduler.name=constant")


def test_lora_dpo_trains_adapters_only_against_the_base_model(alignkit_compose, lora_dpo, tmp_path):
    from transformers import AutoModelForCausalLM

    from alignkit.logprobs import sequence_logprobs, unwrap_lm
    from alignkit.loop import Trainer
    from alignkit.lora import AdapterDisabled
    from alignkit.models import load_model

    cfg = alignkit_compose(*lora_dpo, "trainer.max_steps=2")
    trainer = Trainer(cfg, tmp_path / "run")
    names = {id(p): n for n, p in unwrap_lm(trainer.policy).named_parameters()}
    trained = [names[id(p)] for g in trainer.run.optimizer.param_groups for p in g["params"]]
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    reference = trainer.run.ctx.reference()
    assert isinstance(reference, AdapterDisabled) and list(reference.parameters()) == [], "no second copy"
    result = trainer.fit()
    assert result.eval_before["loss"] == pytest.approx(0.6931471805599453, abs=1e-7)  # B = 0: policy == base
    assert result.eval_after["margin"] != 0.0

    base, _ = load_model(cfg.model)
    base.eval()
    trained_base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
                    for n, p in unwrap_lm(trainer.policy).named_parameters() if "lora_" not in n}
    assert all(torch.equal(trained_base[n], p) for n, p in base.named_parameters()), "frozen base weights moved"
    batch = next(iter(trainer.rollout.eval_batches()))
    with torch.no_grad():
        ref = sequence_logprobs(trainer.run.ctx.reference(), batch).sum  # (2B,)
        plain = sequence_logprobs(base, batch).sum  # (2B,)
        policy = sequence_logprobs(trainer.policy, batch).sum  # (2B,)
    assert torch.equal(ref, plain), "reference log-probs must be the base model's"
    assert not torch.allclose(policy, plain)
    assert trainer.policy.training, "the reference view leaves the policy's train mode alone"

    final = result.final_model
    assert (final / "adapter" / "adapter_model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(final)).eval()  # a plain HF folder: merged weights
    assert not any("lora" in k for k in load_file(str(final / "model.safetensors")))
    with torch.no_grad():
        assert torch.allclose(sequence_logprobs(merged, batch).sum, policy, atol=1e-5)


def test_lora_checkpoints_hold_adapters_and_resume_exactly(alignkit_compose, lora_dpo, tmp_path):
    from alignkit.loop import Trainer

    args = (*lora_dpo, "model.lora.dropout=0.1", "trainer.save_every=2")
    Trainer(alignkit_compose(*args, "trainer.max_steps=4"), tmp_path / "full").fit()
    cut = tmp_path / "cut"
    Trainer(alignkit_compose(*args, "trainer.max_steps=2"), cut).fit()
    saved = {p.name for p in (cut / "checkpoints" / "step-000002" / "model").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= saved and "model.safetensors" not in saved
    Trainer(alignkit_compose(*args, "trainer.max_steps=4", f"resume={cut}"), cut).fit()
    a, b = load_file(str(tmp_path / "full" / "final" / "model.safetensors")), load_file(str(cut / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_options_are_checked(alignkit_compose, tmp_path):
    from alignkit.loop import Trainer

    with pytest.raises(ConfigError, match=r"model.lora.target_modules: \['qkv'\] not among the model's linear layers"):
        Trainer(alignkit_compose("method=sft", "model.lora.r=4", "model.lora.target_modules=[qkv]"), tmp_path / "r")
    with pytest.raises(ConfigError, match="model.lora.r"):
        alignkit_compose("method=sft", "model.lora.r=four")
