"""Dropout shipped in a model's config.json is off by default (``model.disable_dropout``; issue 16, class 2).

A release whose ``config.json`` enables dropout (``attention_dropout: 0.1``) made DPO's step-0 loss
differ from ln 2, and PPO's first ratio and REINFORCE's first KL differ from 1 and 0, because the
policy is trained in ``train()`` mode while the reference runs in ``eval()`` mode. Every expected
value here is exact: a dropout-free model computes the same floats in both modes.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers
from omegaconf import OmegaConf

from alignkit.metrics import read_metrics
from alignkit.models import ModelConfig, disable_dropout, load_model
from tiny import read_config, tiny_model_folder

LN2_FP32 = float(torch.tensor(math.log(2.0), dtype=torch.float32))

#: Dropout fields each tiny architecture's config understands (all read by its modeling code).
DROPOUT_FIELDS = {
    "llama": {"attention_dropout": 0.1},
    "gemma2": {"attention_dropout": 0.1},
    "granite": {"attention_dropout": 0.1},
    "cohere": {"attention_dropout": 0.1},
    "phi": {"attention_dropout": 0.1, "resid_pdrop": 0.1, "embd_pdrop": 0.1},
}


def model_cfg(folder, **extra):
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), {"path": str(folder), **extra})


def token_ids(n: int = 12) -> torch.Tensor:
    return torch.arange(3, 3 + 2 * n).view(2, n) * 37 % 4000  # (2, n) arbitrary in-vocabulary ids


@pytest.fixture(scope="module")
def dropout_folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("dropout") / "llama", "llama", config={"attention_dropout": 0.1})


@pytest.mark.parametrize("arch", sorted(DROPOUT_FIELDS))
def test_loaded_model_in_train_mode_computes_what_eval_mode_computes(tmp_path, arch):
    folder = tiny_model_folder(tmp_path / arch, arch, config=DROPOUT_FIELDS[arch])
    ids = token_ids()  # (2, 12)
    # The independent computation: plain transformers on the same folder, in eval mode.
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        expected = plain(ids).logits  # (2, 12, V)
        plain.train()
        assert not torch.equal(plain(ids).logits, expected), "the folder must really ship dropout"
    model, _ = load_model(model_cfg(folder))
    model.train()
    with torch.no_grad():
        first, second = model(ids).logits, model(ids).logits  # (2, 12, V) each
    assert torch.equal(first, second) and torch.equal(first, expected)
    assert all(getattr(model.config, name) == 0 for name in DROPOUT_FIELDS[arch])


def test_opt_out_keeps_the_configs_dropout(dropout_folder):
    model, _ = load_model(model_cfg(dropout_folder, disable_dropout=False))
    model.train()
    ids = token_ids()
    with torch.no_grad():
        assert not torch.equal(model(ids).logits, model(ids).logits)
    assert model.config.attention_dropout == 0.1
    assert read_config(dropout_folder)["attention_dropout"] == 0.1  # the folder itself is never rewritten


@pytest.mark.parametrize("config_name, model_name, fields", [
    ("GPT2Config", "GPT2LMHeadModel", {"n_embd": 64, "n_layer": 2, "n_head": 4, "attn_pdrop": 0.2,
                                        "resid_pdrop": 0.2, "embd_pdrop": 0.2}),
    ("Qwen2Config", "Qwen2ForCausalLM", {"attention_dropout": 0.2}),
    ("FalconConfig", "FalconForCausalLM", {"attention_dropout": 0.2, "hidden_dropout": 0.2, "num_kv_heads": 4}),
    ("OPTConfig", "OPTForCausalLM", {"dropout": 0.2, "attention_dropout": 0.2, "layerdrop": 0.5, "ffn_dim": 128,
                                     "word_embed_proj_dim": 64}),
])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_disable_dropout_covers_modules_attributes_and_config(config_name, model_name, fields, attention):
    """Dropout modules, float rates passed to functional dropout, and rates read from the config."""
    base = {"vocab_size": 4096, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "bos_token_id": 0, "eos_token_id": 0,
            "pad_token_id": 0}
    config = getattr(transformers, config_name)(**{**base, **fields})
    config._attn_implementation = attention
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(transformers, model_name)(config)
    ids = token_ids()
    model.eval()
    with torch.no_grad():
        expected = model(ids).logits  # (2, 12, V)
        model.train()
        assert not torch.equal(model(ids).logits, expected)
        changed = disable_dropout(model)
        first, second = model(ids).logits, model(ids).logits
    assert changed and torch.equal(first, expected) and torch.equal(second, expected)
    assert all(getattr(model.config, name) == 0 for name in fields if "drop" in name)
    assert disable_dropout(model) == []  # nothing left to change


def train_mode_logits_twice(model, ids):
    model.train()
    with torch.no_grad():
        return model(ids).logits, model(ids).logits  # (2, 12, V) each


def test_lora_policy_is_dropout_free_and_keeps_its_own_lora_dropout(dropout_folder):
    from alignkit.lora import apply_lora
    from alignkit.models import LoraConfig

    ids = token_ids()
    plain = apply_lora(load_model(model_cfg(dropout_folder))[0], OmegaConf.structured(LoraConfig(r=4, dropout=0.0)))
    first, second = train_mode_logits_twice(plain, ids)
    assert torch.equal(first, second)
    lora = apply_lora(load_model(model_cfg(dropout_folder))[0], OmegaConf.structured(LoraConfig(r=4, dropout=0.3)))
    rates = {m.p for m in lora.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.3}  # PEFT's lora_dropout only: model.lora.dropout is an explicit choice


def test_a_lora_checkpoint_loads_dropout_free_unless_opted_out(dropout_folder, tmp_path):
    """``model.path=<adapter folder>``: the base (reloaded through load_model) with the adapter merged in."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    base = transformers.AutoModelForCausalLM.from_pretrained(str(dropout_folder), dtype=torch.float32)
    peft_model = get_peft_model(base, PeftLoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    ids = token_ids()
    merged, _ = load_model(model_cfg(tmp_path / "adapter"))
    first, second = train_mode_logits_twice(merged, ids)
    assert torch.equal(first, second)
    noisy, _ = load_model(model_cfg(tmp_path / "adapter", disable_dropout=False))
    first, second = train_mode_logits_twice(noisy, ids)
    assert not torch.equal(first, second)


# ----------------------------------------------------------------------------- exact starts of each method
@pytest.fixture
def pair_args(pairs_file, dropout_folder):
    return [f"model.path={dropout_folder}", "method=dpo", "data=custom", f"data.path={pairs_file}",
            "data.format=pairwise", "data.eval_fraction=0", "data.max_examples=6", "trainer.batch_size=3",
            "trainer.max_steps=1", "trainer.log_every=1"]


def first_train_record(run_dir) -> dict:
    return next(r for r in read_metrics(run_dir) if r["split"] == "train")


@pytest.mark.parametrize("reference", ["model", "cached"])
def test_dpo_step_zero_loss_is_exactly_ln2_on_a_dropout_model(alignkit_run, pair_args, tmp_path, reference):
    result = alignkit_run(*pair_args, f"method.reference={reference}", run_dir=tmp_path / reference)
    first = first_train_record(result.run_dir)
    assert first["loss"] == LN2_FP32 and abs(first["loss"] - math.log(2)) < 1e-7
    assert first["rewards_chosen"] == 0.0 and first["rewards_rejected"] == 0.0 and first["margin"] == 0.0
    assert first["accuracy"] == 0.5  # every pair an exact tie


def test_dpo_opt_out_keeps_dropout_noise(alignkit_run, pair_args, tmp_path):
    result = alignkit_run(*pair_args, "method.reference=model", "model.disable_dropout=false", run_dir=tmp_path / "on")
    assert first_train_record(result.run_dir)["loss"] != LN2_FP32


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Tell me about item {i}."}) + "\n" for i in range(12)))
    return path


def online_args(method, prompts_file, dropout_folder, *extra):
    return [f"model.path={dropout_folder}", f"method={method}", "data=custom", f"data.path={prompts_file}",
            "data.format=prompts", "data.eval_fraction=0", "scorer=function",
            "scorer.fn=alignkit.plugins.scorers.rewards:brevity", "trainer.batch_size=2", "rollout.num_samples=2",
            "rollout.max_new_tokens=6", "trainer.max_steps=1", "trainer.log_every=1", *extra]


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_ppo_first_ratio_and_value_are_exact_on_a_dropout_model(alignkit_run, prompts_file, dropout_folder, tmp_path,
                                                                monkeypatch, critic):
    import alignkit.plugins.ppo.objective as ppo

    calls = []

    def spy(name, fn):
        def wrapped(new, old, *args, **kwargs):
            calls.append((name, new.detach().clone(), old.detach().clone(), args[-1].bool().clone()))
            return fn(new, old, *args, **kwargs)
        monkeypatch.setattr(ppo, name, wrapped)

    spy("ppo_clip", ppo.ppo_clip)  # (log π, log π_old, A, mask)
    spy("value_clip", ppo.value_clip)  # (V, V_old, G, mask)
    result = alignkit_run(*online_args("ppo", prompts_file, dropout_folder, f"method.critic={critic}"),
                          run_dir=tmp_path / critic)
    (_, logps, old_logps, mask), (_, values, old_values, vmask) = calls[0], calls[1]
    assert mask.any() and torch.equal(torch.exp(logps - old_logps)[mask], torch.ones(int(mask.sum())))
    assert torch.equal(values[vmask], old_values[vmask])  # the critic (a copy for "separate") is dropout-free too
    first = first_train_record(result.run_dir)
    assert first["ratio_mean"] == 1.0 and first["approx_kl"] == 0.0 and first["clip_frac"] == 0.0


def test_reinforce_first_kl_is_exactly_zero_on_a_dropout_model(alignkit_run, prompts_file, dropout_folder, tmp_path):
    result = alignkit_run(*online_args("reinforce", prompts_file, dropout_folder, "method.kl_mode=loss"))
    assert first_train_record(result.run_dir)["kl"] == 0.0
