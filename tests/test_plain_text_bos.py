"""Plain-text mode encodes a prompt exactly as ``tokenizer(text)`` does, BOS included (issue 16, class 10).

A tokenizer that prepends BOS (Llama, Gemma releases) gave ``[5820, ...]`` instead of ``[0, 5820, ...]``
with ``data.chat_template=false``, in training batches and in rollout prompts. Expected ids come from
calling the tokenizer directly.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from alignkit.tokenize import IGNORE_INDEX, Encoder
from tiny import load_tokenizer, tiny_model_folder

BOS = 0  # <|endoftext|>, what load_tokenizer(prepend_bos=True) prepends
PROMPTS = [f"Tell me about item {i}." for i in range(8)]


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


def plain_prompt_text(text: str) -> str:
    return text + "\n\n"  # the plain-text layout: contents joined by blank lines, a blank line after


@pytest.fixture(scope="module")
def bos_tokenizer():
    return load_tokenizer(prepend_bos=True)


@pytest.fixture(scope="module")
def bos_folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("bos") / "llama", "llama", tokenizer=load_tokenizer(prepend_bos=True))


def encoder(tokenizer, chat_template=False, **kwargs):
    return Encoder(tokenizer, max_length=kwargs.pop("max_length", 64), max_prompt_length=kwargs.pop("max_prompt_length", 40),
                   use_chat_template=chat_template, **kwargs)


def test_plain_text_ids_are_what_the_tokenizer_gives(bos_tokenizer):
    text = plain_prompt_text("What is two plus two?")
    expected_prompt = bos_tokenizer(text)["input_ids"]
    assert expected_prompt[0] == BOS and expected_prompt[1] != BOS
    enc = encoder(bos_tokenizer)
    assert enc.prompt_ids(user("What is two plus two?")) == expected_prompt
    encoded = enc.encode(user("What is two plus two?"), assistant("Four."))
    answer = bos_tokenizer("Four.", add_special_tokens=False)["input_ids"] + [bos_tokenizer.eos_token_id]
    assert encoded["input_ids"] == expected_prompt + answer
    assert encoded["labels"] == [IGNORE_INDEX] * len(expected_prompt) + answer


def test_one_bos_in_every_mode_and_none_added_by_a_tokenizer_without_one(bos_tokenizer):
    # A template that writes BOS itself gets exactly one (apply_chat_template adds no special tokens).
    templated = load_tokenizer(prepend_bos=True)
    templated.chat_template = "{{ bos_token }}" + templated.chat_template
    ids = encoder(templated, chat_template=True, max_length=128, max_prompt_length=96).encode(user("Hi"), assistant("Hello."))
    assert ids["input_ids"][0] == BOS and ids["input_ids"].count(BOS) == 1
    # Plain text with a BOS tokenizer: one BOS, at the start.
    plain = encoder(bos_tokenizer).encode(user("Hi"), assistant("Hello."))["input_ids"]
    assert plain[0] == BOS and plain.count(BOS) == 1
    # The default tokenizer adds nothing: the ids are unchanged.
    default = load_tokenizer()
    text = plain_prompt_text("Hi")
    assert default(text)["input_ids"] == default(text, add_special_tokens=False)["input_ids"]
    assert encoder(default).prompt_ids(user("Hi")) == default(text)["input_ids"]


def test_left_truncation_keeps_the_bos(bos_tokenizer):
    long = " ".join(f"word{i}" for i in range(200))
    full = bos_tokenizer(plain_prompt_text(long))["input_ids"]
    enc = encoder(bos_tokenizer)
    ids = enc.prompt_ids(user(long))
    assert len(ids) == 40 and ids == [BOS] + full[-39:]
    assert enc.stats.prompts_truncated == 1
    # The default tokenizer adds no special token: plain left truncation, as before.
    default = load_tokenizer()
    assert encoder(default).prompt_ids(user(long)) == default(plain_prompt_text(long))["input_ids"][-40:]


def write_prompts(path, completions: bool):
    rows = [{"prompt": p, **({"completion": f"Item {i} is fine."} if completions else {})} for i, p in enumerate(PROMPTS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_ctx(cfg, folder):
    from alignkit.models import load_model
    from alignkit.plugin_manager import get_manager

    policy, tokenizer = load_model(cfg.model)
    return SimpleNamespace(cfg=cfg, registry=get_manager().registry, tokenizer=tokenizer, policy=policy,
                           device=torch.device("cpu"), log=lambda line: None, kind="tokens", accelerator=None,
                           run_dir=folder, resumed=False, rollout=None)


def test_training_batches_start_with_bos(alignkit_compose, bos_folder, tmp_path):
    from alignkit.plugins.rollouts.dataset.rollout import DatasetRollout

    path = write_prompts(tmp_path / "sft.jsonl", completions=True)
    cfg = alignkit_compose(f"model.path={bos_folder}", "method=sft", "data=custom", f"data.path={path}",
                           "data.format=prompt_completion", "data.eval_fraction=0", "data.chat_template=false",
                           "trainer.batch_size=4", "rollout.shuffle=false")
    ctx = run_ctx(cfg, tmp_path)
    rollout = DatasetRollout(ctx, cfg.rollout)
    batch = rollout.next_batch()
    tokenizer = load_tokenizer(prepend_bos=True)
    for row, i in zip(batch.input_ids.tolist(), batch.index.tolist()):
        expected = (tokenizer(plain_prompt_text(PROMPTS[i]))["input_ids"]
                    + tokenizer(f"Item {i} is fine.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
        assert row[: len(expected)] == expected and row[0] == BOS


def test_rollout_prompts_start_with_bos(alignkit_compose, bos_folder, tmp_path):
    from alignkit.plugins.rollouts.generate.rollout import GenerateRollout

    path = write_prompts(tmp_path / "prompts.jsonl", completions=False)
    cfg = alignkit_compose(f"model.path={bos_folder}", "method=reinforce", "data=custom", f"data.path={path}",
                           "data.format=prompts", "data.eval_fraction=0", "data.chat_template=false",
                           "scorer=function", "scorer.fn=alignkit.plugins.scorers.rewards:brevity",
                           "trainer.batch_size=2", "rollout.num_samples=2")
    rollout = GenerateRollout(run_ctx(cfg, tmp_path), cfg.rollout)
    tokenizer = load_tokenizer(prepend_bos=True)
    assert [e["prompt_ids"] for e in rollout.train] == [tokenizer(plain_prompt_text(p))["input_ids"] for p in PROMPTS]
    assert all(e["prompt_ids"][0] == BOS for e in rollout.train)


def test_plain_text_judge_prompts_start_with_bos(bos_tokenizer):
    from alignkit.judge import JudgeScorer, JudgeScorerConfig

    cfg = OmegaConf.structured(JudgeScorerConfig(chat_template=False, answer_prefix="Answer:", max_length=24))
    judge = JudgeScorer(None, cfg, None, bos_tokenizer)
    text = cfg.template.replace("{prompt}", "Hi").replace("{completion}", "Hello.")
    prefix = bos_tokenizer("Answer:", add_special_tokens=False)["input_ids"]
    full = bos_tokenizer(text)["input_ids"] + prefix
    assert len(full) > 24, "the judge prompt must be truncated for this test"
    assert judge.judge_ids("Hi", "Hello.") == [BOS] + full[-23:]
