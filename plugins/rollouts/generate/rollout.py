"""``rollout=generate``: prompts from the ``data`` config, completions sampled from the current policy.

Batched Hugging Face ``generate`` with the KV cache, k samples per prompt, temperature / top-p /
top-k / stop strings. Sampling draws from the rollout's own random stream (saved in checkpoints with
the position in the prompt order), so a resumed run samples exactly what the uninterrupted run would
have, whatever else consumed random numbers in between.

Completions come from an inference engine (``rollout.engine``, registered: ``hf`` samples with the
policy's own ``generate`` and is the exact reference; ``vllm`` holds a copy of the weights, synced from
the policy every ``rollout.sync_every`` updates and checked when ``rollout.verify_sync``). The engine's
token ids are trained on as they are (never re-tokenised), and its log-probs of the sampled tokens are
kept (``RolloutBatch.sampler_logps``) for the mismatch statistics and corrections of
:mod:`alignkit.rl.correction`; the objective itself recomputes log-probs with the training code path at
the same temperature, so the PPO ratio of the first update is exactly 1 (TRL #4159 is the bug of mixing
the two). With top-p < 1 or top-k > 0 the tokens come from a truncated distribution while
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
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch

from alignkit.api import (
    IGNORE_INDEX,
    ConfigError,
    DataError,
    EngineDemand,
    RolloutBatch,
    RunContext,
    SamplingSettings,
    TrainingError,
    completion_rows,
    distorting_options,
    encode_records,
    last_user_text,
    make_encoder,
    report_start_model,
    request_seed,
    sampler_logprob_rows,
    shard,
    split_records,
    sync_gap,
)


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
        engine: the registered inference engine that samples (``alignkit ls engines``): ``hf`` (Hugging Face
            generate with the policy itself, the exact reference) or ``vllm`` (in-process vLLM).
        engine_options: the engine's own options (``vllm``: ``kv_cache_gib``, ``gpu_memory_utilization``,
            ``sleep``, ``enforce_eager``, ``max_model_len``, ``dtype``, ``quiet``), typed by its schema.
        sync_every: copy the policy's weights into an engine that holds its own every this many updates
            (1: every update; more is faster and samples from a stale policy, which ``method.is_correction``
            can correct). Held-out evaluation always samples with the current weights.
        verify_sync: after each sync, score a fixed sequence with the engine and the trainer and stop with
            an error when a log-prob differs by more than ``verify_tolerance`` (a debug check, logged as
            ``rollout/sync_gap``).
        verify_tolerance: the largest accepted |Δ log p| of ``verify_sync`` (1e-4 suits fp32).
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
    engine: str = "hf"
    engine_options: dict[str, Any] = field(default_factory=dict)
    sync_every: int = 1
    verify_sync: bool = False
    verify_tolerance: float = 1e-4


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
        self.pad_id = ctx.tokenizer.pad_token_id
        self.sample_seed = tcfg.seed if cfg.seed is None else cfg.seed
        self.rng = SamplingRNG(self.sample_seed, ctx.device)
        self.epoch, self.index, self.eval_round, self.batches_sampled = 0, 0, 0, 0
        self.stats: dict[str, float] = {}
        self._order = self._plan(self.epoch)
        if cfg.sync_every < 1:
            raise ConfigError(f"rollout.sync_every={cfg.sync_every}: must be >= 1")
        # A fixed sequence both the engine and the trainer score after a sync (verify_sync).
        self._probe = [list(e["prompt_ids"]) + list(e["prompt_ids"][:8]) for e in self.train[:2]]
        self.engine_spec = ctx.registry.get("engines", cfg.engine, where="rollout.engine")
        self.engine = self.engine_spec.build(ctx, _engine_options(self.engine_spec, cfg.engine_options), self._demand())
        self._since_sync: int | None = None  # training batches since the last scheduled sync (None: none yet)
        self._current = False  # the engine holds the policy's current weights
        self._refilling = False  # inside fill(): more batches of the same policy (no sync)
        if not self.engine_spec.exact:
            ctx.log(f"rollout: engine {cfg.engine}, weights synced from the policy every {cfg.sync_every} update(s)")

    def _demand(self) -> EngineDemand:
        """The most rows and the longest sequence one engine call will hold (engines size caches by it)."""
        world = self.ctx.accelerator.num_processes if self.ctx.accelerator is not None else 1
        rows = -(-self.batch_size // world) * self.cfg.num_samples  # this process's share of a training batch
        if self.held_out:
            rows = max(rows, self.eval_batch_size * self.cfg.eval_num_samples)
        prompts = [len(e["prompt_ids"]) for e in (*self.train, *self.held_out)]
        longest = max(max(prompts) + self.cfg.max_new_tokens, max(len(p) + 1 for p in self._probe))
        return EngineDemand(rows=rows, sequence_tokens=longest)

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

    def _sync(self, policy: Any, report: bool) -> None:
        """Copy the policy's weights into the engine, checked against the trainer under ``verify_sync``;
        ``report``: log its time (and gap) with the training step (not with an evaluation)."""
        start = time.perf_counter()
        self.engine.sync(policy)
        if report:
            self._count("sync_s", time.perf_counter() - start)
        self._current = True
        if self.cfg.verify_sync:
            gap = sync_gap(self.engine, policy, self._probe)
            if report:
                self._count("sync_gap", gap)
            if gap > self.cfg.verify_tolerance:
                raise TrainingError(f"rollout.engine={self.cfg.engine}: after the weight sync the engine's log-probs differ "
                                    f"from the policy's by {gap:.3g} > rollout.verify_tolerance={self.cfg.verify_tolerance:g}"
                                    " (a parameter the sync did not reach)")

    def _sync_if_due(self, policy: Any, evaluation: bool = False) -> None:
        """Training: every ``sync_every`` batches (no copy when the engine already holds these weights);
        evaluation: whenever the policy changed since the engine last received it, off the schedule."""
        if self.engine_spec.exact:
            return
        if evaluation:
            if not self._current:
                self._sync(policy, report=False)
            return
        if self._since_sync is None or self._since_sync >= self.cfg.sync_every:
            if not self._current:
                self._sync(policy, report=True)
            self._since_sync = 0

    @torch.no_grad()
    def _sample(self, policy: Any, examples: list[dict], k: int, greedy: bool, seeds: list[int]) -> RolloutBatch:
        """Generate k completions for each example and lay them out as a :class:`~alignkit.batches.RolloutBatch`.

        ``seeds``: one per row (sample-major within a prompt), for engines that seed each request.
        """
        prompt_ids = [e["prompt_ids"] for e in examples for _ in range(k)]  # (N,) lists, sample-major per prompt
        # Each row is cut at its first end id (kept: the policy learns to stop; left out of the text).
        cut = self.engine.generate(policy, prompt_ids, self._settings(greedy), seeds)
        prompts = [e["prompt"] for e in examples for _ in range(k)]
        rows = completion_rows(prompt_ids, [c.tokens for c in cut], self.pad_id)  # (N, T) each
        return RolloutBatch(**rows,
                            group=torch.arange(len(examples)).repeat_interleave(k),  # (N,)
                            ended=torch.tensor([c.ended for c in cut], dtype=torch.float32),  # (N,)
                            lengths=torch.tensor([len(c.tokens) for c in cut], dtype=torch.float32),  # (N,)
                            prompts=prompts, prompt_text=[last_user_text(p) for p in prompts],
                            completions=[c.text for c in cut],  # what scorers read: the text before the end of turn
                            columns=[dict(e.get("columns") or {}) for e in examples for _ in range(k)],
                            num_prompts=len(examples), k=k,
                            sampler_logps=sampler_logprob_rows([len(p) for p in prompt_ids], cut,
                                                               rows["input_ids"].shape[1]))  # (N, T-1)

    def _seeds(self, kind: str, base: int, round_: int, indices: list[int], k: int) -> list[int]:
        """Per-row seeds ``request_seed(base, kind, round, prompt index, sample)``: the same rows of the same
        step get the same draws in a resumed run."""
        return [request_seed(base, kind, round_, i, j) for i in indices for j in range(k)]

    def next_batch(self, policy: Any) -> RolloutBatch:
        refill = self._refilling
        if not refill:
            self._sync_if_due(policy)
        chosen = shard(self._next_prompts(), self.ctx.accelerator)  # this process's prompts of the global batch
        examples = [self.train[i] for i in chosen]
        seeds = self._seeds("train", self.sample_seed, self.batches_sampled, chosen, self.cfg.num_samples)
        start = time.perf_counter()
        batch = self.rng.run(lambda: self._sample(policy, examples, self.cfg.num_samples, greedy=False, seeds=seeds))
        self._count("generate_s", self.stats.get("generate_s", 0.0) + time.perf_counter() - start)  # refills add up
        if not refill and self._since_sync is not None:
            self._since_sync += 1
            self._current = False  # the policy is updated on this batch next
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
            if len(signal):  # a rollout may have no group with signal at all
                kept.append(batch.select_prompts(signal))
            if sum(b.num_prompts for b in kept) >= target or refills >= self.cfg.max_refills:
                break
            self._refilling = True  # same policy: no sync, not a new update
            try:
                batch, refills = more(), refills + 1
            finally:
                self._refilling = False
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
        """Per step: ``generate_s`` (the engine's sampling time, refills included), ``sync_s`` (the weight sync, when
        one happened) and ``sync_gap`` (under ``verify_sync``), the share of completions cut by the length cap
        and, under dynamic sampling, the share of zero-signal groups, the extra rollouts sampled and how many
        prompts the batch was short."""
        stats, self.stats = self.stats, {}
        return {f"rollout/{k}": v for k, v in sorted(stats.items())}

    def eval_batches(self) -> Iterator[RolloutBatch]:
        """Held-out prompts in file order, sampled from ``ctx.policy`` with the fixed ``eval_seed``."""
        if not self.held_out:
            return
        policy, cfg = self.ctx.policy, self.cfg
        self._sync_if_due(policy, evaluation=True)
        n, size = len(self.held_out), self.eval_batch_size
        stream = SamplingRNG(cfg.eval_seed, self.ctx.device)
        round_ = self.eval_round
        self.eval_round += 1
        for start in range(0, n, size):
            examples = self.held_out[start:start + size]
            # The same seeds every round (common random numbers, as the eval stream).
            seeds = self._seeds("eval", cfg.eval_seed, 0, list(range(start, start + len(examples))), cfg.eval_num_samples)
            batch = stream.run(lambda: self._sample(policy, examples, cfg.eval_num_samples, greedy=cfg.eval_greedy,
                                                    seeds=seeds))
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


def _engine_options(spec: Any, options: Any) -> Any:
    """``rollout.engine_options`` typed by the engine's schema; an unknown or mistyped key is one line."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if spec.schema is None:
        return options
    try:
        return OmegaConf.merge(OmegaConf.structured(spec.schema), options or {})
    except OmegaConfBaseException as exc:
        raise ConfigError(f"rollout.engine_options for rollout.engine={spec.name}: {str(exc).splitlines()[0]}") from None


def _signal_groups(batch: RolloutBatch) -> torch.Tensor:
    """(p,) indices of the prompts whose k sampled completions did not all get the same reward."""
    rewards = batch.rewards if batch.rewards.dim() == 1 else batch.rewards[:, 0]  # (N,)
    grouped = rewards.view(batch.num_prompts, batch.k)  # (P, k)
    return (grouped != grouped[:, :1]).any(dim=1).nonzero().flatten().cpu()


def build(ctx: RunContext, cfg: Any) -> GenerateRollout:
    """Completions sampled from the policy (HF generate, KV cache, k per prompt), resumable."""
    return GenerateRollout(ctx, cfg)
