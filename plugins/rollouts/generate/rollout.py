"""``rollout=generate``: prompts from the ``data`` config, completions sampled from the current policy.

Batched Hugging Face ``generate`` with the KV cache, k samples per prompt, temperature / top-p /
top-k / stop strings. Sampling draws from the rollout's own random stream (saved in checkpoints with
the position in the prompt order), so a resumed run samples exactly what the uninterrupted run would
have, whatever else consumed random numbers in between.

Log-probs are *not* taken from ``generate``: the objective recomputes them with the training code
path at the same temperature, so the PPO ratio of the first update is exactly 1 (TRL #4159 is the bug
of mixing the two). With top-p < 1 or top-k > 0 the tokens come from a truncated distribution while
the recomputed log-probs are those of the full temperature-scaled softmax: the policy gradient is then
biased (it treats truncated samples as draws from the full policy). A warning says so, and likewise
for the other options that change the sampled distribution (repetition penalty, n-gram blocking,
minimum length, suppressed or banned tokens), which exist only as explicit ``rollout.*`` options:
nothing comes from the model folder's ``generation_config.json`` (:mod:`alignkit.generation`).

Completions end at every end-of-turn id the model declares (:func:`alignkit.generation.end_token_ids`:
the tokenizer's EOS, the generation config's ``eos_token_id`` list, the chat template's end-of-turn
token); the end token is kept in the training row and removed from the text scorers read.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch

from alignkit.api import (
    IGNORE_INDEX,
    ConfigError,
    DataError,
    RolloutBatch,
    RunContext,
    SamplingSettings,
    completion_rows,
    distorting_options,
    encode_records,
    end_token_ids,
    last_user_text,
    make_encoder,
    report_start_model,
    sample,
    shard,
    split_records,
)
from alignkit.api import generate_from_policy as generate


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
        repetition_penalty: CTRL repetition penalty (1.0 = off). Changes the distribution (warned).
        no_repeat_ngram_size: never repeat an n-gram of this size (0 = off). Changes the distribution (warned).
        min_new_tokens: forbid ending before this many tokens (0 = off). Changes the distribution (warned).
        suppress_tokens: token ids never sampled. Changes the distribution (warned).
        bad_words: strings whose tokens are never sampled. Changes the distribution (warned).
        shuffle: reshuffle the training prompts every epoch (seeded by ``trainer.seed`` and epoch).
        seed: seed of the sampling random stream (null: ``trainer.seed``).
        eval_num_samples: completions per held-out prompt at evaluation.
        eval_greedy: greedy decoding at evaluation instead of sampling.
        eval_seed: every evaluation samples with this same seed (common random numbers: the
            before/after difference is not sampling noise of different draws).
        mask_truncated: leave completions cut by ``max_new_tokens`` out of the loss (DAPO's overlong
            filtering: their targets are masked; they still count in their group's advantages).
        dynamic_sampling: drop the groups whose k rewards are all equal (no policy-gradient signal) and
            sample more prompts until the batch has ``trainer.batch_size`` prompts again (DAPO, Yu et al.
            2025), at most ``max_refills`` extra rollouts a step; a batch that stays short trains short.
        max_refills: the cap on extra rollouts per step under ``dynamic_sampling`` (reported).
    """

    name: str = "generate"
    num_samples: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=list)
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    suppress_tokens: list[int] = field(default_factory=list)
    bad_words: list[str] = field(default_factory=list)
    shuffle: bool = True
    seed: Optional[int] = None
    eval_num_samples: int = 1
    eval_greedy: bool = False
    eval_seed: int = 1234
    mask_truncated: bool = False
    dynamic_sampling: bool = False
    max_refills: int = 4


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
        if cfg.repetition_penalty <= 0 or cfg.no_repeat_ngram_size < 0 or cfg.min_new_tokens < 0:
            raise ConfigError(f"rollout.repetition_penalty={cfg.repetition_penalty} must be > 0 (1 = off), "
                              f"rollout.no_repeat_ngram_size={cfg.no_repeat_ngram_size} and "
                              f"rollout.min_new_tokens={cfg.min_new_tokens} >= 0")
        self.ctx, self.cfg = ctx, cfg
        distorting = distorting_options(self._settings(greedy=False))
        if distorting:
            warnings.warn(f"rollout=generate: {', '.join(distorting)} sample from another distribution than the "
                          "temperature softmax whose log-probs the policy gradient uses: the update is biased; "
                          "prefer top_p=1 top_k=0 and no repetition / length / token options for training",
                          RuntimeWarning, stacklevel=2)
        data_cfg, tcfg = ctx.cfg.data, ctx.cfg.trainer
        train_records, eval_records = split_records(data_cfg, ctx.registry, "prompts", tcfg.seed)
        encoder = make_encoder(data_cfg, ctx.tokenizer)
        report_start_model(ctx)  # a model.path trained on text encoded otherwise is reported in one line
        self.train = encode_records(train_records, "prompts", encoder)
        self.held_out = encode_records(eval_records, "prompts", encoder)
        ctx.log(f"data: {len(self.train)} training and {len(self.held_out)} held-out prompts from {data_cfg.name}; "
                f"truncated prompts {encoder.stats.prompts_truncated}; {cfg.num_samples} sample(s) per prompt")
        self.batch_size, self.eval_batch_size, self.seed = tcfg.batch_size, tcfg.eval_batch_size, tcfg.seed
        if len(self.train) < self.batch_size:
            raise DataError(f"data.path: {len(self.train)} training prompts, fewer than trainer.batch_size={self.batch_size}")
        tokenizer = ctx.tokenizer
        self.pad_id = tokenizer.pad_token_id
        # Every id that ends a turn (tokenizer EOS, the model's eos_token_id list, the template's end of turn).
        self.end_ids = end_token_ids(tokenizer, ctx.policy)
        self.rng = SamplingRNG(tcfg.seed if cfg.seed is None else cfg.seed, ctx.device)
        self.epoch, self.index, self.eval_round, self.batches_sampled = 0, 0, 0, 0
        self.stats: dict[str, float] = {}
        self._order = self._plan(self.epoch)

    @property
    def temperature(self) -> float:
        """The sampling temperature (:class:`alignkit.interfaces.Samples`)."""
        return float(self.cfg.temperature)

    @property
    def num_samples(self) -> int:
        """Completions per prompt (:class:`alignkit.interfaces.Samples`)."""
        return int(self.cfg.num_samples)

    @property
    def max_new_tokens(self) -> int:
        """The cap on a completion's length (:class:`alignkit.interfaces.Samples`)."""
        return int(self.cfg.max_new_tokens)

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
    def _settings(self, greedy: bool) -> SamplingSettings:
        """What ``rollout.*`` configures, and nothing else (no model ``generation_config`` field)."""
        cfg = self.cfg
        return SamplingSettings(max_new_tokens=cfg.max_new_tokens, greedy=greedy, temperature=cfg.temperature,
                                top_p=cfg.top_p, top_k=cfg.top_k, stop=tuple(cfg.stop),
                                repetition_penalty=cfg.repetition_penalty, no_repeat_ngram_size=cfg.no_repeat_ngram_size,
                                min_new_tokens=cfg.min_new_tokens, suppress_tokens=tuple(cfg.suppress_tokens),
                                bad_words=tuple(cfg.bad_words))

    @torch.no_grad()
    def _sample(self, policy: Any, examples: list[dict], k: int, greedy: bool) -> RolloutBatch:
        """Generate k completions for each example and lay them out as a :class:`~alignkit.batches.RolloutBatch`."""
        tokenizer = self.ctx.tokenizer
        prompt_ids = [e["prompt_ids"] for e in examples for _ in range(k)]  # (N,) lists, sample-major per prompt
        # Unwrapped, eval mode, a sharded policy (FSDP, ZeRO-3) gathered for generate; train mode restored.
        # Each row is cut at its first end id (kept: the policy learns to stop; left out of the text).
        cut = sample(policy, prompt_ids, self._settings(greedy), end_ids=self.end_ids, pad_id=self.pad_id,
                     tokenizer=tokenizer, device=self.ctx.device,
                     generate=lambda **kwargs: generate(policy, self.ctx.accelerator, **kwargs))
        prompts = [e["prompt"] for e in examples for _ in range(k)]
        return RolloutBatch(**completion_rows(prompt_ids, [c.tokens for c in cut], self.pad_id),
                            group=torch.arange(len(examples)).repeat_interleave(k),  # (N,)
                            ended=torch.tensor([c.ended for c in cut], dtype=torch.float32),  # (N,)
                            prompts=prompts, prompt_text=[last_user_text(p) for p in prompts],
                            completions=[c.text for c in cut],  # what scorers read: the text before the end of turn
                            columns=[dict(e.get("columns") or {}) for e in examples for _ in range(k)],
                            num_prompts=len(examples), k=k)

    def next_batch(self, policy: Any) -> RolloutBatch:
        chosen = shard(self._next_prompts(), self.ctx.accelerator)  # this process's prompts of the global batch
        examples = [self.train[i] for i in chosen]
        batch = self.rng.run(lambda: self._sample(policy, examples, self.cfg.num_samples, greedy=False))
        self.batches_sampled += 1
        self._count("truncated_share", float(1.0 - batch.ended.mean()))
        if self.cfg.mask_truncated:  # cut completions leave the loss (their targets masked), not their groups
            labels = batch.labels.clone()
            labels[batch.ended == 0] = IGNORE_INDEX
            batch = dataclasses.replace(batch, labels=labels)
        return dataclasses.replace(batch, index=torch.tensor(chosen).repeat_interleave(self.cfg.num_samples))  # (N,)

    def fill(self, batch: RolloutBatch, more: Callable[[], RolloutBatch]) -> RolloutBatch:
        """Under ``dynamic_sampling``: the scored batch without its zero-signal groups, topped up with the
        signal groups of more scored rollouts (at most ``max_refills``) to the batch's prompt count."""
        if not self.cfg.dynamic_sampling or batch.rewards is None or self.cfg.num_samples < 2:
            return batch
        target, kept, refills = batch.num_prompts, [], 0
        zero = total = 0
        while True:
            signal = _signal_groups(batch)  # (p,) prompts whose k rewards differ
            zero, total = zero + batch.num_prompts - len(signal), total + batch.num_prompts
            kept.append(batch.select_prompts(signal))
            if sum(b.num_prompts for b in kept) >= target or refills >= self.cfg.max_refills:
                break
            batch, refills = more(), refills + 1
        full = RolloutBatch.concat([b for b in kept if b.num_prompts], self.pad_id) if any(b.num_prompts for b in kept) \
            else batch  # nothing had signal: train on the last batch (a zero gradient), reported
        if full.num_prompts > target:
            full = full.select_prompts(torch.arange(target))
        self._count("zero_signal_share", zero / max(total, 1))
        self._count("refills", float(refills))
        self._count("short_of_prompts", float(max(0, target - full.num_prompts)))
        return full

    def _count(self, name: str, value: float) -> None:
        self.stats[name] = value

    def pop_stats(self) -> dict[str, float]:
        """Per step: the share of completions cut by the length cap and, under dynamic sampling, the share of
        zero-signal groups, the extra rollouts sampled and how many prompts the batch was short."""
        stats, self.stats = self.stats, {}
        return {f"rollout/{k}": v for k, v in sorted(stats.items())}

    def eval_batches(self) -> Iterator[RolloutBatch]:
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
            index = torch.arange(start, start + len(examples)).repeat_interleave(cfg.eval_num_samples)  # (N,)
            yield dataclasses.replace(batch, index=index, eval_round=round_)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "eval_round": self.eval_round,
                "batches_sampled": self.batches_sampled, "rng": dict(self.rng.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self.eval_round, self.batches_sampled = int(state["eval_round"]), int(state["batches_sampled"])
        self.rng.state = dict(state["rng"])
        self._order = self._plan(self.epoch)


def _signal_groups(batch: RolloutBatch) -> torch.Tensor:
    """(p,) indices of the prompts whose k sampled completions did not all get the same reward."""
    rewards = batch.rewards if batch.rewards.dim() == 1 else batch.rewards[:, 0]  # (N,)
    grouped = rewards.view(batch.num_prompts, batch.k)  # (P, k)
    return (grouped != grouped[:, :1]).any(dim=1).nonzero().flatten().cpu()


def build(ctx: RunContext, cfg: Any) -> GenerateRollout:
    """Completions sampled from the policy (HF generate, KV cache, k per prompt), resumable."""
    return GenerateRollout(ctx, cfg)
