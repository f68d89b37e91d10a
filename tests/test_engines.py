"""Issue 19, the engine-independent part: the engine interface behind ``rollout=generate``, the HF engine's
sampler log-probs, the train-inference mismatch statistics and the importance-sampling corrections
(registered, applied by every online method), and the one-line errors. vLLM itself: tests/test_engine_vllm.py.

Expected values come from float64 forwards of the plain transformers model and from hand computation.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from alignkit.step_metrics import metric_float

from tiny import load_tokenizer, tiny_model_folder


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    folder = tiny_model_folder(tmp_path_factory.mktemp("engines") / "llama", "llama")
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), load_tokenizer()


def _reference_logprobs(model, prompt, tokens, temperature, top_k=0, top_p=1.0):
    """float64 log-probs of ``tokens`` after ``prompt`` under softmax(logits / T), top-k then top-p applied."""
    with torch.no_grad():
        logits = model.double()(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1] / temperature  # (n, V)
    model.float()
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1:
        probs, order = torch.softmax(logits, -1).sort(dim=-1, descending=True)
        drop_sorted = probs.cumsum(-1) - probs > top_p  # outside the smallest set holding mass top_p
        logits = logits.masked_fill(torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted), -math.inf)
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens)[:, None])[:, 0]  # (n,)


@pytest.mark.parametrize("options", [dict(temperature=0.7), dict(temperature=0.9, top_k=20, top_p=0.9)])
def test_hf_engine_records_the_sampled_distribution_without_changing_the_draws(tiny_lm, options):
    from alignkit.generation import SamplingSettings, end_token_ids, private_rng, sample

    model, tokenizer = tiny_lm
    prompts = [tokenizer("Hello there, how are")["input_ids"], tokenizer("One two")["input_ids"]] * 2
    settings = SamplingSettings(max_new_tokens=10, **options)
    kwargs = dict(end_ids=end_token_ids(tokenizer, model), pad_id=tokenizer.pad_token_id, tokenizer=tokenizer)
    with private_rng(3):
        plain = sample(model, prompts, settings, **kwargs)
    with private_rng(3):
        recorded = sample(model, prompts, settings, logprobs=True, **kwargs)
    assert [c.tokens for c in plain] == [c.tokens for c in recorded]  # the recorder does not move the draws
    for prompt, completion in zip(prompts, recorded):
        assert len(completion.logprobs) == len(completion.tokens)
        expected = _reference_logprobs(model, prompt, completion.tokens, settings.temperature,
                                       settings.top_k, settings.top_p)
        assert torch.allclose(torch.tensor(completion.logprobs, dtype=torch.float64), expected, atol=1e-5)


def test_sampler_logprobs_sit_where_the_trainers_logprobs_of_the_same_tokens_are():
    from alignkit.batches import RolloutBatch, completion_rows
    from alignkit.engines import sampler_logprob_rows
    from alignkit.generation import Completion

    prompts = [[5, 6, 7], [8]]
    completions = [Completion([10, 11], [10, 11], "", True, [-1.0, -2.0]), Completion([12], [12], "", False, [-3.0])]
    rows = completion_rows(prompts, [c.tokens for c in completions], 0)  # (2, 5)
    sampler = sampler_logprob_rows([3, 1], completions, rows["input_ids"].shape[1])  # (2, 4)
    expected = torch.tensor([[0, 0, -1.0, -2.0], [-3.0, 0, 0, 0]])
    assert torch.equal(sampler, expected)
    batch = RolloutBatch(**rows, group=torch.tensor([0, 1]), ended=torch.ones(2), num_prompts=2, k=1, sampler_logps=sampler)
    mask = batch.response_mask()  # the completion positions are the non-zero ones
    assert torch.equal(mask, sampler != 0)
    second = batch.select([1])  # trailing padding dropped with the token rows
    assert second.sampler_logps.shape == (1, second.input_ids.shape[1] - 1) and second.sampler_logps[0, 0] == -3.0
    both = RolloutBatch.concat([batch.select([1]), batch.select([0])], 0)
    assert torch.equal(both.sampler_logps, expected[[1, 0]])


# ----------------------------------------------------------------------------- the corrections, by hand
def test_truncated_and_masked_weights_by_hand():
    from alignkit.rl import masked_is_weights, truncated_is_weights

    log_ratio = torch.log(torch.tensor([[0.5, 1.0, 3.0], [1.5, 4.0, 9.0]]))  # r per token
    mask = torch.tensor([[True, True, True], [True, True, False]])
    tis = truncated_is_weights(log_ratio, mask, cap=2.0)
    assert torch.allclose(tis, torch.tensor([[0.5, 1.0, 2.0], [1.5, 2.0, 0.0]]), atol=1e-6)
    mis = masked_is_weights(log_ratio, mask, cap=2.0)
    assert torch.allclose(mis, torch.tensor([[0.5, 1.0, 0.0], [1.5, 0.0, 0.0]]), atol=1e-6)
    # sequence level: r = Π_t r_t over counted tokens = 1.5 and 6 (the masked 9 does not count)
    seq = truncated_is_weights(log_ratio, mask, cap=2.0, level="sequence")
    assert torch.allclose(seq, torch.tensor([[1.5, 1.5, 1.5], [2.0, 2.0, 0.0]]), atol=1e-6)
    seq_mis = masked_is_weights(log_ratio, mask, cap=2.0, level="sequence")
    assert torch.allclose(seq_mis, torch.tensor([[1.5, 1.5, 1.5], [0.0, 0.0, 0.0]]), atol=1e-6)
    huge = truncated_is_weights(torch.full((1, 2), 500.0), torch.ones(1, 2, dtype=torch.bool), cap=2.0, level="sequence")
    assert torch.equal(huge, torch.full((1, 2), 2.0))  # no overflow


def test_mismatch_statistics_by_hand():
    from alignkit.rl import mismatch_stats

    r = torch.tensor([[0.5, 2.0, 7.0]])
    mask = torch.tensor([[True, True, False]])
    stats = mismatch_stats(torch.log(r), mask)
    k3 = ((0.5 - 1 - math.log(0.5)) + (2.0 - 1 - math.log(2.0))) / 2
    assert stats["mismatch_kl"].item() == pytest.approx(k3, abs=1e-6)
    assert stats["mismatch_ratio_max"].item() == pytest.approx(2.0) and stats["mismatch_ratio_min"].item() == pytest.approx(0.5)
    same = mismatch_stats(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool))
    assert same["mismatch_kl"].item() == 0 and same["mismatch_ratio_max"].item() == 1


@pytest.mark.parametrize("loss", ["grpo", "cispo", "gspo"])
def test_a_weighted_advantage_weights_each_tokens_policy_gradient(loss):
    """loss(w·A) has gradient Σ_t w_t ∂loss_t: every GRPO-family loss is positively homogeneous in A."""
    from alignkit.plugins.grpo import losses as family
    from alignkit.rl import weighted_advantages

    torch.manual_seed(0)
    logps = torch.randn(3, 4, dtype=torch.float64) * 0.1 - 2
    old = logps.detach().clone()
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    advantages = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    weights = torch.tensor([[2.0, 0.5, 1.0, 0], [1.0, 0.0, 0, 0], [1.5, 1.0, 1.0, 0.25]], dtype=torch.float64)
    fn = getattr(family, loss)
    current = logps.clone().requires_grad_(True)
    fn(current, old, weighted_advantages(advantages, weights), mask, aggregation="token_mean")[0].backward()
    # by hand at ratio 1 (no clip active): d loss / d logp_t = −A·w_t / (counted tokens) for grpo and cispo;
    # gspo's sequence ratio spreads each completion's Σ_t w_t A over its tokens (1/|y| each)
    n = mask.sum()
    if loss == "gspo":
        lengths = mask.sum(dim=1, keepdim=True)
        expected = -(advantages[:, None] * weights * mask).sum(dim=1, keepdim=True) / lengths / n * mask
    else:
        expected = -advantages[:, None] * weights * mask / n
    assert torch.allclose(current.grad, expected, atol=1e-12)


# ----------------------------------------------------------------------------- in the methods
def _prompts(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(12)))
    return path


def _online(method, tmp_path, *extra):
    return [f"method={method}", "data=custom", f"data.path={_prompts(tmp_path)}", "data.format=prompts",
            "data.eval_fraction=0.25", "scorer=function", "scorer.fn=alignkit.plugins.scorers.rewards:brevity",
            "trainer.batch_size=2", "rollout.num_samples=2", "rollout.max_new_tokens=6", "rollout.temperature=0.8",
            "trainer.progress=false", "trainer.tensorboard=false",
            *extra]


@pytest.mark.parametrize("method", ["grpo", "reinforce", "ppo"])
def test_every_online_method_measures_the_mismatch_of_the_hf_engine_as_nothing(alignkit_compose, tmp_path, method):
    """The HF engine samples with the policy itself: sampler and trainer log-probs agree to float noise, so
    the mismatch is ~0, the ratios ~1 and a TIS correction leaves the loss as it was."""
    from alignkit.loop import Trainer

    losses = {}
    for correction in ("none", "tis"):
        trainer = Trainer(alignkit_compose(*_online(method, tmp_path, f"method.is_correction={correction}")),
                          tmp_path / f"run-{correction}")
        raw = trainer.rollout.next_batch(trainer.policy).to(trainer.run.accelerator.device)
        mask = raw.response_mask()
        assert raw.sampler_logps is not None and bool((raw.sampler_logps[mask] < 0).all())
        assert bool((raw.sampler_logps[~mask] == 0).all())
        plan = trainer.objective.updates(raw.with_rewards(trainer.run.scorer(raw)))
        out = trainer.objective(plan.micro_batches()[0])
        assert metric_float(out.metrics["mismatch_kl"]) < 1e-9
        assert abs(metric_float(out.metrics["mismatch_ratio_max"]) - 1) < 1e-5
        assert abs(metric_float(out.metrics["mismatch_ratio_min"]) - 1) < 1e-5
        if correction == "tis":
            assert abs(metric_float(out.metrics["is_weight_mean"]) - 1) < 1e-5 and metric_float(out.metrics["is_capped_frac"]) == 0
        losses[correction] = float(out.total().detach())
    assert losses["tis"] == pytest.approx(losses["none"], abs=1e-5)


def test_tis_caps_the_weight_of_tokens_the_sampler_underrated(alignkit_compose, tmp_path):
    """Sampler log-probs lowered by log 3 on every token: r = 3 everywhere, TIS at C = 2 doubles the
    policy-gradient term of a one-pass GRPO (ratio 1, no clip: the loss is linear in the weight)."""
    import dataclasses

    from alignkit.loop import Trainer

    out = {}
    for correction in ("none", "tis"):
        trainer = Trainer(alignkit_compose(*_online("grpo", tmp_path, f"method.is_correction={correction}",
                                                    "method.is_cap=2.0", "loss.aggregation=token_mean")),
                          tmp_path / f"cap-{correction}")
        raw = trainer.rollout.next_batch(trainer.policy).to(trainer.run.accelerator.device)
        raw = dataclasses.replace(raw, sampler_logps=raw.sampler_logps - math.log(3.0) * raw.response_mask())
        plan = trainer.objective.updates(raw.with_rewards(trainer.run.scorer(raw)))
        out[correction] = trainer.objective(plan.micro_batches()[0])
    assert metric_float(out["none"].metrics["mismatch_ratio_max"]) == pytest.approx(3.0, rel=1e-4)
    assert metric_float(out["tis"].metrics["is_capped_frac"]) == 1.0
    none_loss, tis_loss = float(out["none"].parts()["policy_loss"].value), float(out["tis"].parts()["policy_loss"].value)
    assert tis_loss == pytest.approx(2.0 * none_loss, abs=1e-6)


# ----------------------------------------------------------------------------- errors, one line each
def test_vllm_not_installed_is_one_line(cli_main, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as on a machine without it: ``import vllm`` raises ImportError
    code, out, err = cli_main("train", "model=tiny", *_online("grpo", tmp_path, "rollout.engine=vllm", "trainer.max_steps=1"),
                              f"hydra.run.dir={tmp_path / 'run'}")
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.startswith("alignkit: error")]
    assert len(lines) == 1 and "rollout.engine=vllm needs vLLM" in lines[0] and "alignkit[vllm]" in lines[0]


def test_unknown_engine_and_bad_engine_option_are_one_line(cli_main, tmp_path):
    code, _, err = cli_main("train", "model=tiny", *_online("grpo", tmp_path, "rollout.engine=sglang"),
                            f"hydra.run.dir={tmp_path / 'a'}")
    assert code != 0 and "rollout.engine" in err and "hf" in err and "vllm" in err
    code, _, err = cli_main("train", "model=tiny", *_online("grpo", tmp_path, "+rollout.engine_options.kv_cache=3"),
                            f"hydra.run.dir={tmp_path / 'b'}")
    assert code != 0 and "rollout.engine_options" in err and "kv_cache" in err
    code, _, err = cli_main("train", "model=tiny", *_online("reinforce", tmp_path, "method.is_correction=clip"),
                            f"hydra.run.dir={tmp_path / 'c'}")
    assert code != 0 and "method.is_correction" in err and "tis" in err


def test_registered_names_are_listed(cli_main):
    code, out, _ = cli_main("ls", "engines")
    assert code == 0 and "hf" in out and "vllm" in out
    code, out, _ = cli_main("ls", "is_corrections")
    assert code == 0 and "tis" in out and "mis" in out


def test_the_hf_engine_scores_fixed_sequences_as_a_float64_forward(alignkit_compose, tmp_path):
    """``sync_gap`` of the exact engine is 0, and its log-probs are those of a float64 forward of the policy."""
    import copy

    from alignkit.engines import sync_gap
    from alignkit.logprobs import unwrap_lm
    from alignkit.loop import Trainer

    trainer = Trainer(alignkit_compose(*_online("grpo", tmp_path)), tmp_path / "run")
    sequences = [[1, 504, 3120, 314, 260, 1734], [9, 8, 7, 6]]
    assert sync_gap(trainer.rollout.engine, trainer.policy, sequences) == 0.0
    model = copy.deepcopy(unwrap_lm(trainer.policy)).double().eval()
    for seq, values in zip(sequences, trainer.rollout.engine.prompt_logprobs(sequences)):
        with torch.no_grad():
            expected = torch.log_softmax(model(torch.tensor([seq])).logits[0, :-1], -1).gather(1, torch.tensor(seq[1:])[:, None])[:, 0]
        assert torch.allclose(torch.tensor(values, dtype=torch.float64), expected, atol=1e-5)


def test_a_vllm_start_error_keeps_the_reason_of_a_validation_error():
    """pydantic puts the field and the reason on the lines after "1 validation error for ..."."""
    from alignkit.plugins.engines.vllm import _one_line

    exc = ValueError("1 validation error for VllmConfig\nkv_cache_memory_bytes\n  Input should be a valid integer "
                     "[type=int_type]\n    For further information visit https://errors.pydantic.dev\n\nignored")
    assert _one_line(exc) == ("1 validation error for VllmConfig kv_cache_memory_bytes Input should be a valid "
                              "integer [type=int_type] For further information visit https://errors.pydantic.dev")
    assert len(_one_line(ValueError("x" * 1000))) == 400


def test_the_engine_demand_is_the_largest_call_of_the_run(alignkit_compose, tmp_path):
    """Rows: the larger of a training call (prompts x samples) and an evaluation batch; tokens: the longest
    encoded prompt + max_new_tokens, or the verify-sync probe (a training prompt + 8 of its tokens) + 1."""
    from alignkit.engines import EngineDemand
    from alignkit.loop import Trainer

    for eval_batch, rows in ((3, 2 * 2), (7, 7)):
        trainer = Trainer(alignkit_compose(*_online("grpo", tmp_path, f"trainer.eval_batch_size={eval_batch}")),
                          tmp_path / f"run-{eval_batch}")
        rollout = trainer.rollout
        longest = max(len(e["prompt_ids"]) for e in (*rollout.train, *rollout.held_out))
        probe = max(len(e["prompt_ids"]) + 8 + 1 for e in rollout.train[:2])  # the first two training prompts
        assert rollout._demand() == EngineDemand(rows=rows, sequence_tokens=max(longest + 6, probe))


def test_the_vllm_kv_cache_size_by_hand():
    """SmolLM2-135M in fp32: 2 (K, V) x 30 layers x 3 KV heads x 64 x 4 B = 46,080 B per token; 16 rows of
    96 tokens take one 128-token block each, plus a spare block; 130 tokens take two."""
    from types import SimpleNamespace

    from alignkit.plugins.engines.vllm import kv_cache_bytes

    smol = SimpleNamespace(num_attention_heads=9, num_key_value_heads=3, hidden_size=576, num_hidden_layers=30)
    assert kv_cache_bytes(smol, torch.float32, 16, 96) == 17 * 128 * 46_080
    assert kv_cache_bytes(smol, torch.float32, 16, 130) == 33 * 128 * 46_080
    assert kv_cache_bytes(smol, torch.bfloat16, 1, 128) == 2 * 128 * 23_040
    gemma = SimpleNamespace(num_attention_heads=4, num_key_value_heads=None, hidden_size=64, head_dim=32, num_hidden_layers=2)
    assert kv_cache_bytes(gemma, torch.float32, 2, 10) == 3 * 128 * (2 * 2 * 4 * 32 * 4)
