"""REINFORCE with a baseline (and RLOO / group-normalised advantages) on sampled completions.

Williams 1992 (REINFORCE); Ahmadian et al. 2024, "Back to Basics" (https://arxiv.org/abs/2402.14740,
RLOO); Shao et al. 2024 (https://arxiv.org/abs/2402.03300, group-normalised advantages). The whole
completion is one action; with R_i the scorer's reward of completion i and KL_i = Σ_t kl_t its
summed per-token KL estimate against the frozen reference::

    kl_mode=reward:  r_i = R_i − β·KL_i (KL_i detached),   L = mean_i −A(r)_i · log π(y_i|x_i)
    kl_mode=loss:    r_i = R_i,                            L = mean_i [−A(r)_i · log π(y_i|x_i) + β·KL_i]

with A from the baseline: ``none`` (A = r), ``moving_average`` (A = r − b, b an EMA of past batch
means), ``rloo`` (A_i = r_i − mean of the other k−1 samples of the prompt) or ``group_norm``
((r − mean) / std per prompt). β has the same meaning in both modes; the ``kl`` logged is Σ_t kl_t,
mean over rows, the quantity in the reward or the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from alignkit.api import ConfigError, LossOutput, RolloutBatch, RunContext, UpdatePlan, sequence_logprobs
from alignkit.rl import (
    KL_ESTIMATORS,
    ISCorrectionOptions,
    OnlineEval,
    SamplerCorrection,
    moving_average_baseline,
    reference_logprobs,
    response_mask,
    sampling_rollout,
    scalar_rewards,
    sequence_kl,
)

from .losses import policy_gradient

#: The one baseline that keeps state across batches (every other is a registered advantage estimator).
MOVING_AVERAGE = "moving_average"
KL_MODES = ("reward", "loss")


@dataclass
class ReinforceConfig(ISCorrectionOptions):
    """``method=reinforce`` options (and the ``is_*`` options of :class:`alignkit.rl.ISCorrectionOptions`).

    Attributes:
        name: ``reinforce``.
        baseline: ``moving_average``, or any registered advantage estimator (``alignkit ls advantages``:
            ``none``, ``rloo``, ``group_norm``, ``reinforce_pp``, third-party ones); ``rloo`` and
            ``group_norm`` need ``rollout.num_samples`` >= 2.
        baseline_decay: EMA decay of the moving-average baseline.
        kl_coef: β (0 disables the reference model).
        kl_mode: ``reward`` (−β·KL in the reward) or ``loss`` (+β·KL term in the loss).
        kl_estimator: ``k1`` | ``k2`` | ``k3`` per-token estimator (for ``loss``, k1's gradient is
            zero in expectation: use k2 or k3).
        minibatch_size: prompts per micro-batch (0: the whole rollout); advantages are computed on
            the whole rollout first. Set ``trainer.grad_accum`` to the number of micro-batches for
            one optimizer step per rollout.
    """

    name: str = "reinforce"
    baseline: str = "rloo"
    baseline_decay: float = 0.9
    kl_coef: float = 0.05
    kl_mode: str = "loss"
    kl_estimator: str = "k3"
    minibatch_size: int = 0


class ReinforceObjective:
    """Sequence-level policy gradient with a baseline, on ``rollout=generate`` batches."""

    def __init__(self, ctx: RunContext) -> None:
        cfg = ctx.cfg.method
        if cfg.kl_mode not in KL_MODES:
            raise ConfigError(f"method.kl_mode={cfg.kl_mode!r}; expected one of {KL_MODES}")
        if cfg.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"method.kl_estimator={cfg.kl_estimator!r}; expected one of {sorted(KL_ESTIMATORS)}")
        self.ctx, self.cfg = ctx, cfg
        self.correction = SamplerCorrection(ctx.registry, cfg)
        rollout = sampling_rollout(ctx, "reinforce")
        self.temperature, self.k = rollout.temperature, int(rollout.num_samples)
        self.held_out = OnlineEval(ctx, self.temperature, cfg.kl_estimator, with_kl=cfg.kl_coef > 0)
        self.estimator = None  # the moving average is the method's own (it keeps state)
        if cfg.baseline != MOVING_AVERAGE:
            try:
                self.estimator = ctx.registry.get("advantages", cfg.baseline, where="method.baseline")
            except ConfigError as exc:
                raise ConfigError(f"{exc}; or {MOVING_AVERAGE}") from None
            if self.estimator.needs_groups and self.k < 2:
                raise ConfigError(f"method.baseline={cfg.baseline} compares the k samples of a prompt: set "
                                  f"rollout.num_samples >= 2 (it is {self.k})")
        self.kl_estimator = cfg.kl_estimator
        self.beta = float(cfg.kl_coef)
        self.baseline_value = torch.zeros(())  # moving-average state

    def weight(self, batch: RolloutBatch) -> float:
        """Units: completions (the policy-gradient and KL terms are means over completions)."""
        return float(batch.num_rows)

    def evaluate(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        return self.held_out.evaluate(batch)

    def summarize(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        return self.held_out.summarize(values)

    def _advantages(self, rewards: torch.Tensor, num_prompts: int) -> torch.Tensor:
        """(N,) advantages of N = P·k rewards (sample-major within each prompt)."""
        if self.estimator is not None:  # a registered estimator (alignkit ls advantages): pure, on (P, k)
            return self.estimator.fn(rewards.view(num_prompts, self.k)).reshape(-1)  # (N,)
        # The baseline from before this batch: it must not depend on the samples it is subtracted from.
        advantages = rewards - self.baseline_value.to(rewards)  # (N,)
        self.baseline_value = moving_average_baseline(self.baseline_value, rewards.cpu(), decay=self.cfg.baseline_decay)
        return advantages

    def updates(self, batch: RolloutBatch) -> UpdatePlan:
        """Advantages on the whole rollout, then micro-batches of whole prompts."""
        scores = scalar_rewards(batch, self.ctx)  # (N,)
        n, num_prompts = batch.num_rows, int(batch.num_prompts)
        if n != num_prompts * self.k:
            raise ConfigError(f"method=reinforce: the rollout gave {n} rows for {num_prompts} prompts, expected "
                              f"rollout.num_samples={self.k} per prompt")
        per_chunk = (self.cfg.minibatch_size or num_prompts) * self.k
        chunks = [torch.arange(i, min(i + per_chunk, n)) for i in range(0, n, per_chunk)]
        extra: dict[str, torch.Tensor] = {}
        width = batch.input_ids.shape[1]
        rewards = scores
        if self.beta > 0:
            device = batch.input_ids.device
            ref = torch.zeros(n, width - 1, device=device)  # (N, T-1)
            kl = torch.zeros(n, device=device)  # (N,)
            for rows in chunks:
                sub = batch.select(rows)
                ref_sub = reference_logprobs(self.ctx, sub, self.temperature)  # (r, w-1)
                ref[rows.to(device), : ref_sub.shape[1]] = ref_sub
                if self.cfg.kl_mode == "reward":
                    with torch.no_grad():
                        logps = sequence_logprobs(self.ctx.policy, sub, temperature=self.temperature).logprobs
                    kl[rows.to(device)] = sequence_kl(logps, ref_sub, response_mask(sub), self.kl_estimator).sum(1)
            extra["ref_logps"] = ref
            if self.cfg.kl_mode == "reward":
                rewards = scores - self.beta * kl  # (N,)
                extra["kl_seq"] = kl
        advantages = self._advantages(rewards, num_prompts)  # (N,)
        return UpdatePlan(batch.with_extras(**extra, advantages=advantages, total_rewards=rewards), chunks)

    def __call__(self, batch: RolloutBatch) -> LossOutput:
        stats = sequence_logprobs(self.ctx.policy, batch, temperature=self.temperature)
        mask = response_mask(batch)  # (B, T-1)
        # One pass per rollout: π_old is this policy; importance weights (B, T-1) when a correction is set.
        weights, mismatch = self.correction.weights(stats.logprobs.detach(), batch.sampler_logps, mask)
        seq_logps = stats.sum if weights is None else (stats.logprobs * weights).sum(dim=1)  # (B,) Σ_t w_t log π(y_t)
        loss = policy_gradient(seq_logps, batch.extras["advantages"]).mean()  # ()
        metrics: dict[str, Any] = {"score": batch.rewards.float().mean(),
                                   "reward": batch.extras["total_rewards"].mean(),
                                   "advantage_abs": batch.extras["advantages"].abs().mean(),
                                   "length": batch.completion_lengths().mean(), "ended": batch.ended.mean(), **mismatch}
        if self.beta > 0 and self.cfg.kl_mode == "loss":
            kl = sequence_kl(stats.logprobs, batch.extras["ref_logps"], mask, self.kl_estimator).sum(dim=1)  # (B,)
            loss = loss + self.beta * kl.mean()
            metrics["kl"] = kl.detach().mean()
        elif self.beta > 0:
            metrics["kl"] = batch.extras["kl_seq"].mean()
        if self.estimator is None:
            metrics["baseline"] = self.baseline_value
        return LossOutput(loss, metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline_value.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baseline_value = state["baseline"].clone()


def build(ctx: RunContext) -> ReinforceObjective:
    """REINFORCE / RLOO: policy gradient with a baseline, KL to the reference in the reward or the loss."""
    return ReinforceObjective(ctx)
