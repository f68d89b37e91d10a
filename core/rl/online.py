"""What every online objective (trained on completions sampled from the policy) needs: the sampling
rollout's settings, scalar rewards, reference log-probs, and the held-out evaluation (reward, KL to
the reference, length) as a composed object.
"""

from __future__ import annotations

import json

import torch

from ..batches import RolloutBatch
from ..context import RunContext
from ..errors import ConfigError, TrainingError
from ..interfaces import Samples
from ..logprobs import sequence_logprobs
from ..stats import mean_interval, wilson_interval
from .kl import sequence_kl

SAMPLES_FILE = "samples.jsonl"


def sampling_rollout(ctx: RunContext, method: str) -> Samples:
    """The run's rollout, which must sample from the policy (:class:`alignkit.interfaces.Samples`)."""
    if not isinstance(ctx.rollout, Samples):
        raise ConfigError(f"method={method} trains on sampled completions; use rollout=generate "
                          f"(rollout={ctx.cfg.rollout.name} does not sample)")
    return ctx.rollout


def response_mask(batch: RolloutBatch) -> torch.Tensor:
    """(N, T−1) bool: positions whose next token is a completion token (aligned with log-probs)."""
    return batch.response_mask()  # (N, T-1)


def scalar_rewards(batch: RolloutBatch, ctx: RunContext) -> torch.Tensor:
    """(N,) rewards of a scored batch; a one-line error if the scorer is missing or multi-attribute."""
    if batch.rewards is None:
        raise ConfigError("online methods need a scorer: pass scorer=function|judge|weighted_sum|... (alignkit ls scorers)")
    rewards = batch.rewards
    if rewards.dim() == 2 and rewards.shape[1] == 1:
        rewards = rewards[:, 0]
    if rewards.dim() != 1:
        raise TrainingError(f"scorer '{ctx.cfg.scorer.name}' returned {tuple(rewards.shape)} rewards; online methods "
                            "need one reward per completion (combine attributes with scorer=weighted_sum)")
    return rewards.float()  # (N,)


@torch.no_grad()
def reference_logprobs(ctx: RunContext, batch: RolloutBatch, temperature: float) -> torch.Tensor:
    """(N, T−1) per-token log-probs of the completion under the frozen initial policy."""
    return sequence_logprobs(ctx.reference(), batch, temperature=temperature).logprobs


class OnlineEval:
    """Held-out reward and KL of an online objective, on the sampling rollout's held-out batches.

    Per completion: ``reward`` (the scorer's), ``kl`` (Σ_t of the per-token estimator the method
    trains with, policy vs reference, at the sampling temperature), ``length`` (tokens) and ``ended``
    (stopped before the cap). The first ``samples_logged`` completions of each evaluation are logged;
    all go to ``<run>/samples.jsonl``.

    When every reward is 0 or 1 (a checker: right or wrong) the summary also gives ``accuracy`` with
    its Wilson 95% interval.

    Args:
        ctx: the run context.
        temperature: the sampling temperature (log-probs are computed at it).
        kl_estimator: ``k1`` | ``k2`` | ``k3``.
        samples_logged: completions printed per evaluation.
        with_kl: measure the KL to the reference (False: no reference model is loaded, no ``kl``).
    """

    def __init__(self, ctx: RunContext, temperature: float, kl_estimator: str, samples_logged: int = 2,
                 with_kl: bool = True) -> None:
        self.ctx, self.temperature, self.kl_estimator, self.samples_logged = ctx, temperature, kl_estimator, samples_logged
        self.with_kl = with_kl

    @torch.no_grad()
    def evaluate(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        rewards = scalar_rewards(batch, self.ctx)  # (N,)
        mask = response_mask(batch)  # (N, T-1)
        values = {"reward": rewards, "length": batch.completion_lengths(), "ended": batch.ended.float()}
        kl = None
        if self.with_kl:
            logps = sequence_logprobs(self.ctx.policy, batch, temperature=self.temperature).logprobs  # (N, T-1)
            ref = reference_logprobs(self.ctx, batch, self.temperature)  # (N, T-1)
            kl = values["kl"] = sequence_kl(logps, ref, mask, self.kl_estimator).sum(dim=1)  # (N,)
        self._write_samples(batch, rewards, kl)
        return values

    def summarize(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        rewards = values["reward"]
        mean, low, high = mean_interval(rewards)
        summary = {"reward": mean, "reward_ci_low": low, "reward_ci_high": high,
                   "length": float(values["length"].mean()), "ended": float(values["ended"].mean()),
                   "completions": float(rewards.numel())}
        if "kl" in values:
            summary["kl"] = float(values["kl"].mean())
        if bool(((rewards == 0) | (rewards == 1)).all()):  # a checker's verdicts: accuracy with its interval
            correct = float(rewards.sum())
            summary["accuracy"] = correct / max(rewards.numel(), 1)
            summary["accuracy_ci_low"], summary["accuracy_ci_high"] = wilson_interval(correct, rewards.numel())
        return summary

    def _write_samples(self, batch: RolloutBatch, rewards: torch.Tensor, kl: torch.Tensor | None) -> None:
        if not self.ctx.accelerator.is_main_process:
            return
        round_ = -1 if batch.eval_round is None else int(batch.eval_round)
        first = batch.index is not None and int(batch.index[0]) == 0
        rows = []
        for i, (prompt, completion) in enumerate(zip(batch.prompt_text, batch.completions)):
            rows.append({"eval_round": round_, "prompt": prompt, "completion": completion,
                         "reward": float(rewards[i]), **({"kl": float(kl[i])} if kl is not None else {})})
            if first and i < self.samples_logged:
                self.ctx.log(f"sample (eval {round_}) reward={float(rewards[i]):.3f}: {prompt!r} -> {completion!r}")
        with open(self.ctx.run_dir / SAMPLES_FILE, "a") as handle:
            handle.write("".join(json.dumps(r) + "\n" for r in rows))
