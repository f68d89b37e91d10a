"""alignkit against TRL on the same model, data and machine: throughput, peak memory, MFU, loss curves.

Two workloads on SmolLM2-135M-Instruct (fp32, CPU), each framework in its own process, alternating
A B / B A over ``--pairs`` pairs, every figure taken pair by pair and summarised by the median:

- ``dpo``: alignkit ``method=dpo`` (cached reference) vs TRL ``DPOTrainer`` (its defaults except where
  the comparison needs them equal): the same bundled HH-RLHF harmless pairs (those that fit
  ``--max-length`` untruncated, sorted by length so both see the same batches in the same order), the
  same batch, max length, β = 0.1, AdamW at a constant learning rate, max grad norm 1, steps.
- ``rloo``: alignkit ``method=reinforce method.baseline=rloo`` vs TRL ``RLOOTrainer`` on the bundled
  short-question prompts with the same function reward (``brevity``, at most 8 words), k samples
  per prompt, generation length, temperature, KL coefficient, learning rate and steps.
- ``grpo``: alignkit ``method=grpo loss=dapo`` vs TRL ``GRPOTrainer`` (its defaults: loss ``dapo``, no KL)
  on the bundled arithmetic task with the same math-verify checker.

``--engines hf vllm`` runs alignkit once per inference engine (``rollout.engine``) beside TRL (which
generates with HF on CPU); the rounds rotate the order of the arms. ``vllm`` needs vLLM in the running
Python (``bash .ci/setup_vllm``, then ``.venv-vllm/bin/pip install -e '.[bench]'`` and run this script
with ``.venv-vllm/bin/python``: every arm then uses the same transformers). Per step it also records the
generation time (alignkit: ``rollout/generate_s``; TRL: its ``_generate_and_score_completions``, which
also scores) and alignkit's weight-sync time.

Measured per process: wall time from loading the model to the end of the last optimizer step (data
preparation, reference log-probs, an inference engine's start-up and generation included; each arm's
framework is imported before its clock starts and the import time is reported beside it, with the
ratio that counts it), the non-padding tokens every forward
pass of the training step saw (prompt + completion, chosen + rejected), tokens/s, peak RSS (the
process's ``VmHWM``) and the loss of every step. Model FLOP utilisation is the achieved model FLOP/s
(6·N per trained token + 2·N per reference or generated token + attention, N the 134.5 M matmul
parameters) divided by the best fp32 GEMM FLOP/s this machine reaches, measured in the same run
between the pairs. TRL is a benchmark extra, never a runtime dependency::

    pip install -e '.[bench,model]'
    python benchmarks/vs_trl.py                     # both workloads, 3 pairs each (~17 min on 2 idle cores)
    python benchmarks/vs_trl.py --workload dpo --pairs 1 --steps 2     # a quick look
    .venv-vllm/bin/python benchmarks/vs_trl.py --workload grpo --engines hf vllm   # + alignkit on vLLM
    python benchmarks/vs_trl.py --child dpo alignkit --spec '{...}'    # one measurement, one JSON line
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: alignkit's overrides per inference engine; the arm is named ``alignkit`` (hf) or ``alignkit-<engine>``.
# vLLM: KV cache sized to the run (the default); its packed weights dropped between rollouts (sleep: the next
# sync, due every step here, rebuilds them), so training does not hold the engine's copy beside its own
ENGINES = {"hf": [], "vllm": ["rollout.engine=vllm", "+rollout.engine_options.sleep=true"]}
TASK = "arith"  # the bundled verifiable task (conf/data/arith.yaml)
LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------- helpers
def _status_mb(key: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _model_folder() -> Path:
    from alignkit.models import ensure_smollm2

    return ensure_smollm2()  # the GGUF converted once into a plain HF folder ($ALIGNKIT_CACHE)


def _asset(relative: str) -> Path:
    import alignkit

    return Path(alignkit.__file__).parent / "assets" / relative


def _read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class StepClock:
    """Wall time and loss of every optimizer step, counted from construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.ends: list[float] = []
        self.losses: list[float] = []
        self.scores: list[float] = []  # RLOO: mean function reward of each step's samples
        self.generate_s = 0.0    # sampling (TRL: generation and scoring)
        self.sync_s = 0.0        # weight syncs into an inference engine
        self.tokens = 0          # non-padding tokens the training forwards saw
        self.padded_tokens = 0   # the same including padding
        self.rows = 0            # sequences

    def count(self, attention_mask, rows: bool = True) -> None:
        self.tokens += int(attention_mask.sum())
        self.padded_tokens += int(attention_mask.numel())
        self.rows += int(attention_mask.shape[0]) if rows else 0

    def result(self, steps: int) -> dict:
        seconds = self.ends[-1] - self.start
        return {"seconds": seconds, "tokens": self.tokens, "padded_tokens": self.padded_tokens, "rows": self.rows,
                "tokens_per_s": self.tokens / seconds, "losses": self.losses[:steps],
                "scores": self.scores[:steps],
                "step_seconds": [b - a for a, b in zip([self.start] + self.ends[:-1], self.ends)],
                "generate_s": self.generate_s, "generate_share": self.generate_s / seconds, "sync_s": self.sync_s,
                "peak_rss_mb": _status_mb("VmHWM")}


# ---------------------------------------------------------------------------------------------- data
def prepare_pairs(tokenizer, count: int, max_length: int) -> list[dict]:
    """``count`` bundled HH-RLHF pairs that fit ``max_length`` untruncated, sorted by length.

    Sorting makes each batch hold similar lengths (both frameworks pad to the longest in the batch),
    and both read the pairs in this order, so both train on identical batches.
    """
    from alignkit.plugins.formats.parsers import parse_hh_rlhf

    chosen = []
    for row in _read_jsonl_gz(_asset("data/hh_harmless/train.jsonl.gz")):
        pair = parse_hh_rlhf(row)
        prompt = tokenizer.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
        lengths = [len(tokenizer.apply_chat_template(pair["prompt"] + pair[key], tokenize=True, return_dict=False))
                   for key in ("chosen", "rejected")]
        if max(lengths) <= max_length and len(prompt) < max_length // 2:
            chosen.append(({"prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"]},
                           max(lengths)))
        if len(chosen) == count:
            break
    if len(chosen) < count:
        raise SystemExit(f"only {len(chosen)} bundled pairs fit max_length={max_length}; asked for {count}")
    return [pair for pair, _ in sorted(chosen, key=lambda item: -item[1])]


def prepare_prompts(count: int) -> list[dict]:
    rows = _read_jsonl_gz(_asset("data/brief_prompts/train.jsonl.gz"))[:count]
    return [{"prompt": [{"role": "user", "content": row["prompt"]}]} for row in rows]


def prepare_task_prompts(count: int) -> list[dict]:
    """The bundled verifiable task's first ``count`` training problems: chat prompt + reference answer."""
    rows = _read_jsonl_gz(_asset(f"data/{TASK}/train.jsonl.gz"))[:count]
    return [{"prompt": [{"role": "user", "content": row["prompt"]}], "answer": str(row["answer"])} for row in rows]


# ---------------------------------------------------------------------------------------------- alignkit
def _alignkit_trainer(overrides: list[str], run_dir: str, clock: StepClock):
    from alignkit import checkpoint
    from alignkit.compose import compose, validate
    from alignkit.loop import Trainer

    checkpoint.write_model = lambda *args, **kwargs: None  # TRL saves nothing either: no 517 MB final write
    cfg = compose(["model=smollm2", "trainer.progress=false", "trainer.tensorboard=false", "trainer.save_every=0",
                   "trainer.log_every=1", "trainer.max_grad_norm=1.0", "trainer.optimizer.weight_decay=0.0",
                   "trainer.scheduler.name=constant", "trainer.scheduler.warmup_steps=0", "rollout.shuffle=false",
                   *overrides])
    validate(cfg)
    trainer = Trainer(cfg, Path(run_dir))
    next_batch = trainer.rollout.next_batch

    def counting_next_batch(policy=None):
        batch = next_batch(policy)
        clock.count(batch.attention_mask)
        return batch

    trainer.rollout.next_batch = counting_next_batch
    train_step = trainer._train_step

    def timed_step(stream):
        values = train_step(stream)
        clock.ends.append(time.perf_counter())
        clock.losses.append(float(values["loss"]))
        clock.generate_s += float(values.get("rollout/generate_s", 0.0))
        clock.sync_s += float(values.get("rollout/sync_s", 0.0))
        if "score" in values:
            clock.scores.append(float(values["score"]))
        return values

    trainer._train_step = timed_step
    return trainer


def alignkit_dpo(spec: dict, workdir: str) -> dict:
    data = Path(workdir) / "pairs.jsonl"
    clock = StepClock()
    trainer = _alignkit_trainer(
        ["method=dpo", "data=custom", f"data.path={data}", "data.format=pairwise", "data.eval_fraction=0",
         f"data.max_length={spec['max_length']}", f"data.max_prompt_length={spec['max_length'] // 2}",
         "method.reference=cached", f"method.beta={spec['beta']}", f"trainer.batch_size={spec['batch']}",
         f"trainer.max_steps={spec['steps']}", f"trainer.optimizer.lr={spec['lr']}", "rollout.bucket=false",
         *spec.get("alignkit_overrides", [])],
        workdir + "/alignkit-run", clock)
    trainer.fit()
    return clock.result(spec["steps"])


def alignkit_grpo(spec: dict, workdir: str) -> dict:
    data = Path(workdir) / "prompts.jsonl"
    clock = StepClock()
    trainer = _alignkit_trainer(
        ["method=grpo", f"loss={spec['loss']}", "scorer=math", "data=custom", f"data.path={data}",
         "data.format=prompts", "data.eval_fraction=0", "data.max_length=256", "data.max_prompt_length=128",
         f"rollout.num_samples={spec['k']}", f"rollout.max_new_tokens={spec['max_new_tokens']}",
         f"rollout.temperature={spec['temperature']}", f"trainer.batch_size={spec['prompts']}",
         f"trainer.max_steps={spec['steps']}", f"trainer.optimizer.lr={spec['lr']}", *spec.get("alignkit_overrides", [])],
        workdir + "/alignkit-run", clock)
    trainer.fit()
    return clock.result(spec["steps"])


def alignkit_rloo(spec: dict, workdir: str) -> dict:
    data = Path(workdir) / "prompts.jsonl"
    clock = StepClock()
    trainer = _alignkit_trainer(
        ["method=reinforce", "method.baseline=rloo", f"method.kl_coef={spec['beta']}", "method.kl_mode=loss",
         "scorer=function", "scorer.fn=alignkit.plugins.scorers.rewards:brevity", "+scorer.kwargs.max_words=8",
         "data=custom", f"data.path={data}", "data.format=prompts", "data.eval_fraction=0",
         "data.max_length=192", "data.max_prompt_length=64", f"rollout.num_samples={spec['k']}",
         f"rollout.max_new_tokens={spec['max_new_tokens']}", f"rollout.temperature={spec['temperature']}",
         f"trainer.batch_size={spec['prompts']}", f"trainer.max_steps={spec['steps']}",
         f"trainer.optimizer.lr={spec['lr']}", *spec.get("alignkit_overrides", [])],
        workdir + "/alignkit-run", clock)
    trainer.fit()
    return clock.result(spec["steps"])


# ---------------------------------------------------------------------------------------------- TRL
def _trl_callback(clock: StepClock):
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                clock.losses.append(float(logs["loss"]))
            if logs and "reward" in logs:
                clock.scores.append(float(logs["reward"]))

    return Clock()


def _trl_model():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _model_folder()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(folder)


def trl_dpo(spec: dict, workdir: str) -> dict:
    import copy

    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from trl import DPOConfig, DPOTrainer

    clock = StepClock()
    model, tokenizer = _trl_model()
    ref_model = copy.deepcopy(model).eval()
    rows = [json.loads(line) for line in (Path(workdir) / "pairs.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list(rows)  # conversational: prompt / chosen / rejected message lists

    class InOrder(DPOTrainer):  # the same batches in the same order as alignkit (no shuffling)
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

        def training_step(self, model, inputs, *args, **kwargs):
            clock.count(inputs["attention_mask"])  # here, not in the collator: the loader prefetches
            return super().training_step(model, inputs, *args, **kwargs)

    args = DPOConfig(output_dir=workdir + "/trl-run", per_device_train_batch_size=spec["batch"],
                     max_steps=spec["steps"], learning_rate=spec["lr"], beta=spec["beta"],
                     max_length=spec["max_length"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                     max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to=[], bf16=False,
                     use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0,
                     gradient_checkpointing=spec.get("trl_gradient_checkpointing", True))
    trainer = InOrder(model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      callbacks=[_trl_callback(clock)])
    trainer.train()
    return clock.result(spec["steps"])


def trl_rloo(spec: dict, workdir: str) -> dict:
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    from alignkit.plugins.scorers.rewards import brevity

    clock = StepClock()
    model, tokenizer = _trl_model()
    rows = [json.loads(line) for line in (Path(workdir) / "prompts.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list(rows)

    def brevity_reward(prompts, completions, **kwargs):  # conversational completions: [[{"content": ...}]]
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return brevity(prompts, texts, max_words=8)

    class Counting(RLOOTrainer):
        def _generate_and_score_completions(self, inputs):
            start = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            clock.generate_s += time.perf_counter() - start
            clock.count(out["prompt_mask"])
            clock.count(out["completion_mask"], rows=False)  # the same rows' second half
            return out

    args = RLOOConfig(output_dir=workdir + "/trl-run", per_device_train_batch_size=spec["prompts"] * spec["k"],
                      num_generations=spec["k"], max_completion_length=spec["max_new_tokens"],
                      shuffle_dataset=False,  # the prompts in file order, as alignkit reads them
                      temperature=spec["temperature"], top_p=1.0, top_k=0, beta=spec["beta"],
                      max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="constant",
                      warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
                      report_to=[], bf16=False, use_cpu=True, seed=0, disable_tqdm=True,
                      dataloader_num_workers=0)
    trainer = Counting(model=model, reward_funcs=brevity_reward, args=args, train_dataset=dataset,
                       processing_class=tokenizer, callbacks=[_trl_callback(clock)])
    trainer.train()
    return clock.result(spec["steps"])


def trl_grpo(spec: dict, workdir: str) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from alignkit.plugins.scorers.verifiable import math_equal

    clock = StepClock()
    model, tokenizer = _trl_model()
    rows = [json.loads(line) for line in (Path(workdir) / "prompts.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list(rows)  # prompt (message list) + answer: TRL passes the answer column by name

    def math_reward(prompts, completions, answer, **kwargs):  # the checker alignkit's scorer=math runs
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(math_equal(text, str(gold))) for text, gold in zip(texts, answer)]

    class Counting(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            start = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            clock.generate_s += time.perf_counter() - start
            clock.count(out["prompt_mask"])
            clock.count(out["completion_mask"], rows=False)  # the same rows' second half
            return out

    args = GRPOConfig(output_dir=workdir + "/trl-run", per_device_train_batch_size=spec["prompts"] * spec["k"],
                      num_generations=spec["k"], max_completion_length=spec["max_new_tokens"],
                      shuffle_dataset=False, loss_type=spec["loss"], scale_rewards="group", beta=0.0,
                      epsilon=0.2, num_iterations=1, temperature=spec["temperature"], top_p=1.0, top_k=0,
                      max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="constant",
                      warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
                      report_to=[], bf16=False, use_cpu=True, seed=0, disable_tqdm=True,
                      dataloader_num_workers=0)
    trainer = Counting(model=model, reward_funcs=math_reward, args=args, train_dataset=dataset,
                       processing_class=tokenizer, callbacks=[_trl_callback(clock)])
    trainer.train()
    return clock.result(spec["steps"])


CHILDREN = {("dpo", "alignkit"): alignkit_dpo, ("dpo", "trl"): trl_dpo,
            ("rloo", "alignkit"): alignkit_rloo, ("rloo", "trl"): trl_rloo,
            ("grpo", "alignkit"): alignkit_grpo, ("grpo", "trl"): trl_grpo}


def import_framework(base: str, engine: str) -> float:
    """Import the arm's framework (alignkit + its inference engine, or TRL) before its clock starts; seconds.

    Every arm's clock starts at loading the model, so no arm is charged for its imports (TRL's pulls in
    vLLM when it is installed: ~8 s); the import time is reported beside the figures."""
    import torch

    start = time.perf_counter()
    if base == "trl":
        import trl  # noqa: F401
        from trl import DPOTrainer, GRPOTrainer, RLOOTrainer  # noqa: F401
    else:
        import alignkit.compose  # noqa: F401
        import alignkit.loop  # noqa: F401
        if engine == "vllm":  # vLLM imports lazily: what its engine loads on first use comes too
            from alignkit.plugins.engines.vllm import import_vllm

            import_vllm(quiet=True)
            from vllm import LLM, SamplingParams  # noqa: F401

            if not torch.cuda.is_available():
                from vllm.v1.attention.backends import cpu_attn  # noqa: F401
    return time.perf_counter() - start


def run_child(workload: str, framework: str, spec: dict) -> None:
    import torch

    torch.manual_seed(0)
    base, _, engine = framework.partition("-")
    if engine:
        spec = {**spec, "alignkit_overrides": [*spec.get("alignkit_overrides", []), *ENGINES[engine]]}
    import_s = import_framework(base, engine)
    result = CHILDREN[(workload, base)](spec, spec["workdir"])
    result.update({"workload": workload, "framework": framework, "import_s": import_s,
                   "tokens_per_s_with_import": result["tokens"] / (result["seconds"] + import_s)})
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------- FLOPs
def gemm_flops(seconds: float = 4.0) -> float:
    """Best fp32 GEMM FLOP/s over the model's own matmul shapes (2·m·n·k per product), median of runs."""
    import torch

    best = 0.0
    for m, k, n in ((2048, 576, 1536), (2048, 1536, 576), (2048, 576, 576), (1024, 576, 49152 // 4)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        rates = []
        deadline = time.perf_counter() + seconds / 4
        while time.perf_counter() < deadline or len(rates) < 5:
            start = time.perf_counter()
            a @ b
            rates.append(2 * m * n * k / (time.perf_counter() - start))
        best = max(best, statistics.median(rates))
    return best


def model_shape() -> dict:
    config = json.loads((_model_folder() / "config.json").read_text())
    d, layers, inter, vocab = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"], config["vocab_size"]
    kv = d * config["num_key_value_heads"] // config["num_attention_heads"]
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * inter  # q, o, k, v, gate/up/down
    return {"matmul_params": layers * per_layer + vocab * d, "layers": layers, "d": d}


def model_flops(workload: str, result: dict, shape: dict) -> float:
    """The model FLOPs a run had to do: the same count for both frameworks on the same tokens.

    Per token of a sequence of length T (N matmul parameters, L layers, width d): a training forward
    and backward costs 6·N + 12·L·d·T (attention scores and mixing, Kaplan et al. 2020 / PaLM's
    MFU appendix), a reference forward 2·N + 4·L·d·T; RLOO also generates, 2·N + 4·L·d·T per token
    (prompt prefill and sampled tokens, KV cache). Recomputation (activation checkpointing) and
    padding are not counted: they are the implementation's cost, not the model's.
    """
    n, layers, d = shape["matmul_params"], shape["layers"], shape["d"]
    mean_len = result["tokens"] / max(1, result["rows"])
    per_token = (6 * n + 12 * layers * d * mean_len) + (2 * n + 4 * layers * d * mean_len)
    if workload in ("rloo", "grpo"):
        per_token += 2 * n + 4 * layers * d * mean_len
    return result["tokens"] * per_token


# ---------------------------------------------------------------------------------------------- parent
def measure(workload: str, framework: str, spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", workload, framework, "--spec", json.dumps(spec)],
                         capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"{workload}/{framework} failed (exit {out.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def measure_gemm() -> float:
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import vs_trl; print(vs_trl.gemm_flops())"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


SPECS = {
    # TRL's DPO defaults are batch 8 and max_length 1024 with activation checkpointing on; 512 keeps a run
    # within minutes here while the longest sorted pairs still come first (the peak-memory batch).
    "dpo": {"batch": 8, "steps": 3, "max_length": 512, "beta": 0.1, "lr": 1e-5,
            "alignkit_overrides": ["trainer.activation_checkpointing=1"]},
    # TRL's RLOO defaults: the whole rollout in one backward pass with activation checkpointing; alignkit the
    # same (one micro-batch of all 4 x k samples, every decoder layer checkpointed).
    "rloo": {"prompts": 4, "k": 4, "steps": 3, "max_new_tokens": 32, "temperature": 0.8, "beta": 0.05, "lr": 2e-5,
             "alignkit_overrides": ["method.minibatch_size=0", "trainer.grad_accum=1",
                                    "trainer.activation_checkpointing=1"]},
    # TRL's GRPO defaults: loss_type "dapo" (token-level), group-normalised rewards, no KL (beta 0), one
    # update per rollout, clip 0.2, activation checkpointing on; alignkit the same with loss=dapo and
    # method=grpo's defaults, its rollout trained as 4 accumulated micro-batches of 2 prompts x k (one
    # optimizer step, the same update) without activation checkpointing: peak memory bounded by the
    # micro-batch, no recomputation.
    "grpo": {"prompts": 8, "k": 4, "steps": 3, "max_new_tokens": 48, "temperature": 1.0, "lr": 1e-6,
             "loss": "dapo", "alignkit_overrides": ["method.minibatch_size=2", "trainer.grad_accum=4"]},
}


def prepare(workload: str, spec: dict, workdir: Path) -> None:
    from transformers import AutoTokenizer

    workdir.mkdir(parents=True, exist_ok=True)
    if workload == "dpo":
        tokenizer = AutoTokenizer.from_pretrained(_model_folder())
        rows = prepare_pairs(tokenizer, spec["batch"] * spec["steps"], spec["max_length"])
        (workdir / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif workload == "grpo":
        rows = prepare_task_prompts(spec["prompts"] * spec["steps"])
        (workdir / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        rows = prepare_prompts(spec["prompts"] * spec["steps"])
        (workdir / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _arms(runs: list[dict]) -> list[str]:
    """The arms of a run, alignkit's first and TRL last (old results.json files: alignkit and trl)."""
    names = list(dict.fromkeys(r["framework"] for r in runs))
    return sorted(names, key=lambda n: (n == "trl", n))


def summarize(workload: str, runs: list[dict], gemm: list[float], shape: dict) -> dict:
    """Round-by-round ratios (each alignkit arm / TRL) and their medians, MFU, loss-curve agreement."""
    peak_gemm = statistics.median(gemm)
    for run in runs:
        run["model_flops"] = model_flops(workload, run, shape)
        run["mfu"] = run["model_flops"] / run["seconds"] / peak_gemm
    arms = _arms(runs)
    rounds = [runs[i:i + len(arms)] for i in range(0, len(runs) - len(arms) + 1, len(arms))]
    by_arm = [{r["framework"]: r for r in group} for group in rounds]
    summary: dict = {"workload": workload, "pairs": len(rounds), "arms": arms, "gemm_flops": peak_gemm}
    for arm in arms:
        mine = [r for r in runs if r["framework"] == arm]
        for key in ("tokens_per_s", "peak_rss_mb", "mfu", "seconds", "tokens", "generate_share", "sync_s", "import_s",
                    "tokens_per_s_with_import"):
            values = [r[key] for r in mine if key in r]
            if values:
                summary[f"{arm}_{key}"] = statistics.median(values)
        if arm == "trl":
            continue
        speed = [g[arm]["tokens_per_s"] / g["trl"]["tokens_per_s"] for g in by_arm]
        memory = [g[arm]["peak_rss_mb"] / g["trl"]["peak_rss_mb"] for g in by_arm]
        summary[f"{arm}_speed_ratios"], summary[f"{arm}_memory_ratios"] = speed, memory
        if all("import_s" in g[arm] and "import_s" in g["trl"] for g in by_arm):
            summary[f"{arm}_speed_ratio_with_import"] = statistics.median(
                g[arm]["tokens_per_s_with_import"] / g["trl"]["tokens_per_s_with_import"] for g in by_arm)
        summary[f"{arm}_speed_ratio"], summary[f"{arm}_memory_ratio"] = statistics.median(speed), statistics.median(memory)
        summary[f"{arm}_curve_gap"] = [max(abs(x - y) for x, y in zip(g[arm]["losses"], g["trl"]["losses"])) for g in by_arm]
    # the names earlier reports used (the HF-engine arm against TRL)
    summary.update(speed_ratios=summary["alignkit_speed_ratios"], memory_ratios=summary["alignkit_memory_ratios"],
                   speed_ratio=summary["alignkit_speed_ratio"], memory_ratio=summary["alignkit_memory_ratio"],
                   curve_gap=summary["alignkit_curve_gap"],
                   first_loss={arm: [r["losses"][0] for r in runs if r["framework"] == arm] for arm in arms})
    return summary


def _label(arm: str) -> str:
    return {"alignkit": "alignkit (hf)", "trl": "TRL"}.get(arm, arm.replace("alignkit-", "alignkit (") + ")")


def _with_old_names(summary: dict) -> dict:
    """A summary of an earlier results.json (alignkit vs TRL only) with the per-arm names."""
    old = {"alignkit_speed_ratio": "speed_ratio", "alignkit_speed_ratios": "speed_ratios",
           "alignkit_memory_ratio": "memory_ratio", "alignkit_memory_ratios": "memory_ratios"}
    return {**{new: summary[key] for new, key in old.items() if key in summary}, **summary}


def report(summary: dict, spec: dict, runs: list[dict]) -> str:
    summary = _with_old_names(summary)
    w = summary["workload"]
    arms = summary.get("arms") or _arms(runs)
    what = (f"DPO, {spec['batch']} pairs/step, max_length {spec['max_length']}, {spec['steps']} steps"
            if w == "dpo" else
            f"{w.upper()}{' (loss ' + spec['loss'] + ')' if 'loss' in spec else ''}, {spec['prompts']} prompts x "
            f"k={spec['k']}/step, {spec['max_new_tokens']} new tokens, {spec['steps']} steps")
    ours = [a for a in arms if a != "trl"]
    lines = [f"{what}; {summary['pairs']} rounds (arms in rotating order), medians",
             "| | " + " | ".join(_label(a) for a in arms) + " |", "|---" * (len(arms) + 1) + "|"]
    ratios = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    row = lambda name, key, fmt: f"| {name} | " + " | ".join(  # noqa: E731
        format(summary[f"{a}_{key}"], fmt) if f"{a}_{key}" in summary else "" for a in arms) + " |"
    lines.append(row("tokens/s", "tokens_per_s", ".1f"))
    lines.append("| tokens/s vs TRL (round by round) | " + " | ".join(
        f"**{summary[f'{a}_speed_ratio']:.2f}x** ({ratios(summary[f'{a}_speed_ratios'])})" for a in ours) + " | 1 |")
    lines.append(row("peak RSS (MB)", "peak_rss_mb", ",.0f"))
    lines.append("| peak RSS vs TRL | " + " | ".join(
        f"**{summary[f'{a}_memory_ratio']:.2f}x** ({ratios(summary[f'{a}_memory_ratios'])})" for a in ours) + " | 1 |")
    lines.append(row("MFU", "mfu", ".0%"))
    if w != "dpo":
        lines.append(row("generation share of the run", "generate_share", ".0%"))
        if any(f"{a}_sync_s" in summary and summary[f"{a}_sync_s"] > 0 for a in ours):
            lines.append(row("weight sync, s per run", "sync_s", ".1f"))
    lines.append(row("seconds (load to last step)", "seconds", ".0f"))
    if any(f"{a}_import_s" in summary for a in arms):
        lines.append(row("import, s (before the clock)", "import_s", ".1f"))
        lines.append("| tokens/s vs TRL counting the imports | " + " | ".join(
            f"{summary[f'{a}_speed_ratio_with_import']:.2f}x" if f"{a}_speed_ratio_with_import" in summary else ""
            for a in ours) + " | 1 |")
    first = summary["first_loss"]
    exact = lambda xs: ", ".join(f"{x:.6f}" for x in xs)  # noqa: E731
    if w == "dpo":
        lines.append(f"first-step loss: alignkit {exact(first['alignkit'])}; TRL {exact(first['trl'])} "
                     f"(ln 2 = {LN2:.6f}); largest per-step loss gap within a pair: "
                     + ", ".join(f"{x:.1e}" for x in summary["curve_gap"]))
    elif any(r.get("scores") for r in runs):  # the RL losses are defined differently: compare rewards
        for name in arms:
            curves = [r.get("scores", []) for r in runs if r["framework"] == name]
            lines.append(f"mean reward per step, {_label(name)}: " + " | ".join(" ".join(f"{v:.3f}" for v in c) for c in curves))
    lines.append(f"GEMM peak of this machine (fp32, median of {len(summary.get('gemm_runs', [])) or 'the'} runs): "
                 f"{summary['gemm_flops'] / 1e9:.0f} GFLOP/s")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w for w in SPECS if w in results]
    fig, axes = plt.subplots(len(workloads), 2, figsize=(10, 3.6 * len(workloads)), squeeze=False)
    palette = {"alignkit": "tab:blue", "trl": "tab:orange", "alignkit-vllm": "tab:green"}
    for row, w in enumerate(workloads):
        runs, summary = results[w]["runs"], _with_old_names(results[w]["summary"])
        arms = summary.get("arms") or _arms(runs)
        colors = {a: palette.get(a, "tab:purple") for a in arms}
        ax = axes[row][0]
        key = "losses" if w == "dpo" or not runs[0].get("scores") else "scores"
        for run in runs:
            steps = range(1, len(run[key]) + 1)
            ax.plot(steps, run[key], marker="o", alpha=0.6, color=colors[run["framework"]])
        for name in arms:
            ax.plot([], [], color=colors[name], label=_label(name))
        if w == "dpo":
            ax.axhline(LN2, color="gray", linestyle=":", label="ln 2")
        ax.set(title=f"{w.upper()}: {'training loss' if key == 'losses' else 'mean reward of the samples'}, every run",
               xlabel="step", ylabel="loss" if key == "losses" else "reward")
        ax.legend()
        ax = axes[row][1]
        speed = [summary[f"{n}_tokens_per_s"] for n in arms]
        peak = [summary[f"{n}_peak_rss_mb"] / 1024 for n in arms]
        x = range(len(arms))
        ax.bar([i - 0.2 for i in x], speed, width=0.4, color=[colors[n] for n in arms], label="tokens/s")
        ax.set_xticks(list(x), [_label(n) for n in arms])
        ax.set_ylabel("tokens/s (left bars)")
        twin = ax.twinx()
        twin.bar([i + 0.2 for i in x], peak, width=0.4, color=[colors[n] for n in arms], alpha=0.4, hatch="//")
        twin.set_ylabel("peak RSS GB (hatched)")
        title = ", ".join(f"{_label(a)} {summary[f'{a}_speed_ratio']:.2f}x / {summary[f'{a}_memory_ratio']:.2f}x mem"
                          for a in arms if a != "trl")
        ax.set_title(f"{w.upper()} vs TRL: {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "FRAMEWORK"))
    parser.add_argument("--spec", default="{}")
    parser.add_argument("--workload", choices=("dpo", "rloo", "grpo", "all"), default="all")
    parser.add_argument("--pairs", type=int, default=3, help="rounds per workload (each arm once; the order rotates)")
    parser.add_argument("--engines", nargs="+", default=["hf"], choices=sorted(ENGINES),
                        help="alignkit's inference engines to measure, one arm each (rollout.engine)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the spec's)")
    parser.add_argument("--out", default="runs/vs_trl", help="folder for results.json, the data and the plot")
    parser.add_argument("--alignkit", nargs="*", default=None, metavar="OVERRIDE",
                        help="alignkit overrides replacing the spec's (e.g. trainer.activation_checkpointing=0)")
    parser.add_argument("--report", nargs="+", metavar="RESULTS_JSON",
                        help="print the tables of earlier runs' results.json files and plot them together")
    args = parser.parse_args()
    if args.child:
        run_child(*args.child, json.loads(args.spec))
        return
    out = Path(args.out).resolve()
    if args.report:
        merged = {k: v for path in args.report for k, v in json.loads(Path(path).read_text()).items()}  # later wins
        for entry in merged.values():
            print(report(entry["summary"], entry["spec"], entry["runs"]) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        plot(merged, out / "vs_trl.png")
        print(f"plot: {out / 'vs_trl.png'}")
        return
    shape = model_shape()
    results: dict = {}
    for workload in (tuple(SPECS) if args.workload == "all" else (args.workload,)):
        spec = {**SPECS[workload], "workdir": str(out / workload)}
        if args.steps:
            spec["steps"] = args.steps
        if args.alignkit is not None:
            spec["alignkit_overrides"] = args.alignkit
        prepare(workload, spec, out / workload)
        runs, gemm = [], [measure_gemm()]
        arms = [("alignkit" if e == "hf" else f"alignkit-{e}") for e in args.engines] + ["trl"]
        for pair in range(args.pairs):
            shift = pair % len(arms)
            for framework in (arms[shift:] + arms[:shift]) if len(arms) > 2 else (arms if pair % 2 == 0 else arms[::-1]):
                run = measure(workload, framework, spec)
                runs.append(run)
                print(f"{workload} round {pair + 1} {framework:<14} {run['tokens_per_s']:7.1f} tokens/s  "
                      f"peak {run['peak_rss_mb']:7,.0f} MB  {run['seconds']:6.0f} s  losses "
                      + " ".join(f"{v:.4f}" for v in run["losses"]), flush=True)
            gemm.append(measure_gemm())
        summary = summarize(workload, runs, gemm, shape)
        summary["gemm_runs"] = gemm
        results[workload] = {"spec": spec, "runs": runs, "summary": summary}
        print("\n" + report(summary, spec, runs) + "\n", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "vs_trl.png")
    print(f"results: {out / 'results.json'}; plot: {out / 'vs_trl.png'}")


if __name__ == "__main__":
    main()
