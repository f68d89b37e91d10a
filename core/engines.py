"""Inference engines: what samples the completions of ``rollout=generate`` (``rollout.engine=hf|vllm|...``).

An engine is given prompt token ids and :class:`~alignkit.generation.SamplingSettings` and returns, per
prompt, the completion's token ids exactly as sampled (never re-tokenised), each sampled token's
log-prob under the distribution it was drawn from (temperature and truncation applied) as the engine
computed it, and why it finished (:class:`~alignkit.generation.Completion`). Engines are registered
(:class:`~alignkit.specs.EngineSpec`, hook ``register_engines``):

- ``hf`` samples with the policy itself (Hugging Face ``generate``): the exact reference, nothing to sync;
- ``vllm`` samples with an in-process vLLM ``LLM`` holding a copy of the weights, synced from the policy
  every ``rollout.sync_every`` updates and checked by :func:`sync_gap`.

The trainer recomputes log-probs with its own code path; the engine's are kept beside them
(``RolloutBatch.sampler_logps``) so the train-inference mismatch is measured every step and can be
corrected (:mod:`alignkit.rl.correction`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import torch

from .generation import Completion, SamplingSettings

#: Largest per-request seed (vLLM takes a 64-bit signed seed; 2**31 keeps every engine safe).
SEED_RANGE = 2**31 - 1


@dataclass(frozen=True)
class EngineDemand:
    """The most one ``generate`` / ``prompt_logprobs`` call of this run asks of an engine, known when the
    engine is built (``EngineSpec.build(context, options, demand)``), so it can size its caches to the run
    (vLLM: KV cache and longest sequence) instead of to the model's context window.

    Attributes:
        rows: the most sequences in one call (training: prompts per process x samples; evaluation:
            ``trainer.eval_batch_size`` x ``rollout.eval_num_samples``).
        sequence_tokens: the longest prompt + completion in tokens (``max_new_tokens`` after the longest
            encoded prompt, or a scored sequence plus one).
    """

    rows: int
    sequence_tokens: int


@runtime_checkable
class Engine(Protocol):
    """What ``rollout=generate`` samples with.

    Implementations: :mod:`alignkit.plugins.engines.hf`, :mod:`alignkit.plugins.engines.vllm`.
    """

    def generate(self, policy: Any, prompts: Sequence[Sequence[int]], settings: SamplingSettings,
                 seeds: Sequence[int]) -> list[Completion]:
        """One completion per prompt, in prompt order.

        Args:
            policy: the policy being trained (an exact engine samples with it; others ignore it and use
                the weights of their last :meth:`sync`).
            prompts: N lists of prompt token ids.
            settings: the decoding options (nothing is taken from the model's generation config).
            seeds: N per-request seeds (:func:`request_seed`); an engine that samples from the global
                generator (``hf``) ignores them and is made reproducible by the rollout's saved stream.

        Returns:
            N :class:`~alignkit.generation.Completion` with ``logprobs`` (one per token) filled in.
        """
        ...

    def sync(self, policy: Any) -> None:
        """Make the engine's weights those of ``policy`` (every parameter the engine holds; LoRA merged)."""
        ...

    def prompt_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """log p(x_t | x_<t) for t = 1 .. len − 1 of each sequence at temperature 1, as the engine computes it."""
        ...

    def close(self) -> None:
        """Free the engine's memory (a vLLM engine's KV cache and weight copy)."""
        ...


def request_seed(*parts: int | str) -> int:
    """A seed in [0, 2**31 − 1) for one sampling request, e.g. ``request_seed(seed, step, prompt, sample)``.

    A hash (BLAKE2b) of the parts, so neighbouring steps or prompts get unrelated streams and a resumed
    run asks for exactly the seeds the uninterrupted run did.
    """
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % SEED_RANGE


def engine_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of every weight of ``model`` under its Hugging Face names, LoRA merged in.

    A PEFT model gives its base model's names (``...q_proj.weight``, not ``base_model.model...base_layer``)
    with W + ΔW of every active adapter (``LoraLayer.get_delta_weight``: scaling · B A); the adapter
    tensors themselves are not listed. Tied weights appear under each name (an engine that ties them
    loads one). Tensors are detached views (no copy unless merged).
    """
    from .logprobs import unwrap_lm
    from .lora import is_lora

    inner = unwrap_lm(model)
    if not is_lora(inner):
        for name, tensor in inner.state_dict().items():
            yield name, tensor.detach()
        return
    from peft.tuners.lora import LoraLayer

    base = inner.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            active = [a for a in module.active_adapters if a in module.lora_A]
            if active:
                deltas[name] = sum(module.get_delta_weight(a) for a in active).detach()  # (out, in)
    for name, tensor in base.state_dict().items():
        if ".lora_" in name:
            continue
        name = name.replace(".base_layer.", ".")
        owner, _, leaf = name.rpartition(".")
        tensor = tensor.detach()
        yield name, (tensor + deltas[owner].to(tensor.dtype) if leaf == "weight" and owner in deltas else tensor)


@torch.no_grad()
def policy_logprobs(policy: Any, sequences: Sequence[Sequence[int]], pad_id: int = 0) -> list[list[float]]:
    """log p(x_t | x_<t), t = 1 .. len − 1, of each sequence under ``policy`` at temperature 1, through the
    training code path (:func:`alignkit.logprobs.sequence_logprobs`): what engines are compared with."""
    from .batches import TokenBatch, completion_rows
    from .logprobs import sequence_logprobs

    rows = completion_rows([list(s[:1]) for s in sequences], [list(s[1:]) for s in sequences], pad_id)  # (N, T) each
    device = next(policy.parameters()).device
    batch = TokenBatch(**{k: v.to(device) for k, v in rows.items()})
    logps = sequence_logprobs(policy, batch, temperature=1.0).logprobs  # (N, T-1)
    return [logps[i, : len(s) - 1].tolist() for i, s in enumerate(sequences)]


def sync_gap(engine: Engine, policy: Any, sequences: Sequence[Sequence[int]]) -> float:
    """max |log p_engine − log p_policy| over every next-token log-prob of ``sequences`` (temperature 1).

    The check that a weight sync took: a fixed continuation scored by the engine and by the training
    code path (:func:`policy_logprobs`). fp32 engines agree to ~1e-6; a parameter the sync missed (a tied
    LM head, rotary tables) shows as a gap of 0.1 or more while greedy tokens may still look right.
    """
    gap = 0.0
    for theirs, ours in zip(engine.prompt_logprobs(sequences), policy_logprobs(policy, sequences)):
        if theirs:
            diff = torch.tensor(ours, dtype=torch.float64) - torch.tensor(theirs, dtype=torch.float64)
            gap = max(gap, float(diff.abs().max()))
    return gap


def sampler_logprob_rows(prompt_lengths: Sequence[int], completions: Sequence[Completion], width: int) -> torch.Tensor:
    """(N, width − 1) the engine's log-probs placed where the trainer's log-probs of the same tokens are.

    Row i's completion token t sits at position ``prompt_lengths[i] + t`` of the (N, width) rows, so its
    log-prob (predicted from the position before) is at column ``prompt_lengths[i] + t − 1``; everything
    else is 0.
    """
    out = torch.zeros(len(completions), max(width - 1, 0))  # (N, width-1)
    for i, (start, completion) in enumerate(zip(prompt_lengths, completions)):
        values = completion.logprobs or []
        if values:
            out[i, start - 1: start - 1 + len(values)] = torch.tensor(values, dtype=torch.float32)
    return out
