"""``rollout=generate``: prompts from the ``data`` config, completions sampled from the current policy.

Batched Hugging Face ``generate`` with the KV cache, k samples per prompt, temperature / top-p /
top-k / stop strings. Sampling draws from the rollout's own random stream (saved in checkpoints with
the position in the prompt order), so a resumed run samples exactly what the uninterrupted run would
have, whatever else consumed random numbers in between.

Log-probs are *not* taken from ``generate``: the objective recomputes them with the training code
path at the same temperature, so the PPO ratio of the first update is exactly 1 (TRL #4159 is the bug
of mixing the two). With top-p < 1 or top-k > 0 the tokens come from a truncated distribution while
the recomputed log-probs are those of the full temperature-scaled softmax: the policy gradient is then
biased (it treats truncated samples as draws from the full policy). A warning says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch

from alignkit.context import RunContext
from alignkit.data import encode_records, make_encoder, split_records
from alignkit.distributed import generate, shard
from alignkit.errors import ConfigError, DataError

from .layout import build_rows, completion_end, last_user_text


@dataclass
class GenerateConfig:
    """The ``rollout=generate`` options.

    Attributes:
        name: ``generate``.
        num_samples: k completions per prompt (RLOO / group baselines need k >= 2). A rollout batch
            has ``trainer.batch_size`` prompts, i.e. ``batch_size * num_samples`` rows.
        temperature: sampling temperature (> 0); log-probs for training use the same one.
        top_p: nucleus sampling (1.0 = off). Truncated sampling biases the gradient (warned).
        top_k: top-k sampling (0 = off). Truncated sampling biases the gradient (warned).
        max_new_tokens: cap on completion length; a completion that hits it has ``ended = 0``.
        stop: stop strings; a completion ends with the token that completes one (kept in the text).
        shuffle: reshuffle the training prompts every epoch (seeded by ``trainer.seed`` and epoch).
        seed: seed of the sampling random stream (null: ``trainer.seed``).
        eval_num_samples: completions per held-out prompt at evaluation.
        eval_greedy: greedy decoding at evaluation instead of sampling.
        eval_seed: every evaluation samples with this same seed (common random numbers: the
            before/after difference is not sampling noise of different draws).
    """

    name: str = "generate"
    num_samples: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=list)
    shuffle: bool = True
    seed: Optional[int] = None
    eval_num_samples: int = 1
    eval_greedy: bool = False
    eval_seed: int = 1234


class SamplingRNG:
    """A private random stream for ``generate`` (which draws from the global generator).

    ``run(fn)`` swaps the stream in, runs ``fn`` and swaps it out, leaving the global state as it was.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        with torch.random.fork_rng(devices=self._devices()):
            torch.manual_seed(seed)
            self.state = self._get()

    def _devices(self) -> list[int]:
        return [self.device.index or 0] if self.cuda else []

    def _get(self) -> dict[str, torch.Tensor]:
        state = {"cpu": torch.get_rng_state()}
        if self.cuda:
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["cpu"])
        if self.cuda and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def run(self, fn: Any) -> Any:
        with torch.random.fork_rng(devices=self._devices()):
            self._set(self.state)
            result = fn()
            self.state = self._get()
        return result

    @staticmethod
    def once(seed: int, device: torch.device, fn: Any) -> Any:
        """Run ``fn`` under a fresh stream seeded with ``seed`` (evaluation), global state untouched."""
        return SamplingRNG(seed, device).run(fn)


class GenerateRollout:
    """Samples k completions per prompt from the policy and lays them out for online objectives."""

    def __init__(self, ctx: RunContext, cfg: Any) -> None:
        if cfg.num_samples < 1 or cfg.eval_num_samples < 1:
            raise ConfigError("rollout.num_samples and rollout.eval_num_samples must be >= 1")
        if cfg.temperature <= 0:
            raise ConfigError(f"rollout.temperature={cfg.temperature}: must be > 0 (use rollout.eval_greedy for greedy eval)")
        if not 0 < cfg.top_p <= 1 or cfg.top_k < 0:
            raise ConfigError(f"rollout.top_p={cfg.top_p} must be in (0, 1] and rollout.top_k={cfg.top_k} >= 0")
        if cfg.top_p < 1 or cfg.top_k > 0:
            warnings.warn(f"rollout=generate: top_p={cfg.top_p} / top_k={cfg.top_k} sample from a truncated "
                          "distribution but the policy gradient uses the full softmax's log-probs: the update is "
                          "biased; prefer top_p=1 top_k=0 for training", RuntimeWarning, stacklevel=2)
        self.ctx, self.cfg = ctx, cfg
        data_cfg, tcfg = ctx.cfg.data, ctx.cfg.trainer
        train_records, eval_records = split_records(data_cfg, ctx.registry, "prompts", tcfg.seed)
        encoder = make_encoder(data_cfg, ctx.tokenizer)
        self.train = encode_records(train_records, "prompts", encoder)
        self.held_out = encode_records(eval_records, "prompts", encoder)
        ctx.log(f"data: {len(self.train)} training and {len(self.held_out)} held-out prompts from {data_cfg.name}; "
                f"truncated prompts {encoder.stats.prompts_truncated}; {cfg.num_samples} sample(s) per prompt")
        self.batch_size, self.eval_batch_size, self.seed = tcfg.batch_size, tcfg.eval_batch_size, tcfg.seed
        if len(self.train) < self.batch_size:
            raise DataError(f"data.path: {len(self.train)} training prompts, fewer than trainer.batch_size={self.batch_size}")
        tokenizer = ctx.tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.eos_ids = {tokenizer.eos_token_id}
        self.rng = SamplingRNG(tcfg.seed if cfg.seed is None else cfg.seed, ctx.device)
        self.epoch, self.index, self.eval_round, self.batches_sampled = 0, 0, 0, 0
        self._order = self._plan(self.epoch)

    # ------------------------------------------------------------------ prompt order
    def _plan(self, epoch: int) -> list[int]:
        n = len(self.train)
        if not self.cfg.shuffle:
            return list(range(n))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(n, generator=generator).tolist()

    def _next_prompts(self) -> list[int]:
        if self.index + self.batch_size > len(self._order):  # drop the ragged tail: full batches only
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._plan(self.epoch)
        chosen = self._order[self.index:self.index + self.batch_size]
        self.index += self.batch_size
        return chosen

    # ------------------------------------------------------------------ sampling
    def _generation_config(self, greedy: bool) -> Any:
        from transformers import GenerationConfig

        cfg = self.cfg
        options: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "pad_token_id": self.pad_id,
                                   "eos_token_id": sorted(self.eos_ids), "use_cache": True}
        if greedy:
            options.update(do_sample=False)
        else:
            # Explicit values: nothing inherited from the model's generation_config (a hidden top_k=50
            # there would silently truncate the sampling distribution).
            options.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
        if cfg.stop:
            options["stop_strings"] = list(cfg.stop)
        return GenerationConfig(**options)

    @torch.no_grad()
    def _sample(self, policy: Any, examples: list[dict], k: int, greedy: bool) -> dict:
        """Generate k completions for each example and lay the rows out (see ``layout``)."""
        tokenizer = self.ctx.tokenizer
        prompt_ids = [e["prompt_ids"] for e in examples for _ in range(k)]  # (N,) lists, sample-major per prompt
        width = max(len(p) for p in prompt_ids)
        device = self.ctx.device
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompt_ids], device=device)  # (N, P)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)  # (N, P)
        extra = {"tokenizer": tokenizer} if self.cfg.stop else {}
        # Unwrapped, eval mode, a sharded policy (FSDP, ZeRO-3) gathered for generate; train mode restored.
        out = generate(policy, self.ctx.accelerator, input_ids=ids, attention_mask=mask,
                       generation_config=self._generation_config(greedy), **extra)  # (N, P + new)
        generated = out[:, width:].tolist()
        completions, ended = [], []
        for tokens in generated:
            length, stopped = completion_end(tokens, self.eos_ids, self.cfg.stop, tokenizer)
            completions.append(tokens[:length])
            ended.append(stopped)
        batch: dict[str, Any] = build_rows(prompt_ids, completions, self.pad_id)
        batch["group"] = torch.arange(len(examples)).repeat_interleave(k)  # (N,)
        batch["ended"] = torch.tensor(ended, dtype=torch.float32)  # (N,)
        batch["prompts"] = [e["prompt"] for e in examples for _ in range(k)]
        batch["prompt_text"] = [last_user_text(p) for p in batch["prompts"]]
        batch["completions"] = tokenizer.batch_decode(completions, skip_special_tokens=True)
        batch["num_prompts"], batch["k"] = len(examples), k
        return batch

    def next_batch(self, policy: Any) -> dict:
        chosen = shard(self._next_prompts(), self.ctx.accelerator)  # this process's prompts of the global batch
        examples = [self.train[i] for i in chosen]
        batch = self.rng.run(lambda: self._sample(policy, examples, self.cfg.num_samples, greedy=False))
        batch["index"] = torch.tensor(chosen).repeat_interleave(self.cfg.num_samples)  # (N,) prompt indices
        self.batches_sampled += 1
        return batch

    def eval_batches(self) -> Iterator[dict]:
        """Held-out prompts in file order, sampled from ``ctx.policy`` with the fixed ``eval_seed``."""
        if not self.held_out:
            return
        policy, cfg = self.ctx.policy, self.cfg
        n, size = len(self.held_out), self.eval_batch_size
        stream = SamplingRNG(cfg.eval_seed, self.ctx.device)
        round_ = self.eval_round
        self.eval_round += 1
        for start in range(0, n, size):
            examples = self.held_out[start:start + size]
            batch = stream.run(lambda: self._sample(policy, examples, cfg.eval_num_samples, greedy=cfg.eval_greedy))
            batch["index"] = torch.arange(start, start + len(examples)).repeat_interleave(cfg.eval_num_samples)  # (N,)
            batch["eval_round"] = round_
            yield batch

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "eval_round": self.eval_round,
                "batches_sampled": self.batches_sampled, "rng": dict(self.rng.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self.eval_round, self.batches_sampled = int(state["eval_round"]), int(state["batches_sampled"])
        self.rng.state = dict(state["rng"])
        self._order = self._plan(self.epoch)


def build(ctx: RunContext, cfg: Any) -> GenerateRollout:
    """Completions sampled from the policy (HF generate, KV cache, k per prompt), resumable."""
    return GenerateRollout(ctx, cfg)
