"""PPO for language models: per-token KL penalty to the reference, GAE, clipped policy and value losses.

Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (https://arxiv.org/abs/1707.06347);
the RLHF recipe of Ziegler et al. 2019 (https://arxiv.org/abs/1909.08593) and Ouyang et al. 2022
(https://arxiv.org/abs/2203.02155). For one rollout of N completions, at each completion token t::

    kl_t = estimator(log π_old(y_t), log π_ref(y_t))              (k1: log π_old − log π_ref; k3; ...)
    r_t  = −β · kl_t  (+ the scorer's reward R on the last token)
    A, G = gae(r, V_old, γ, λ);  A ← whiten(A)
    L    = ppo_clip(log π, log π_old, A) + c_v · value_clip(V, V_old, G) − c_H · H(π)

for ``ppo_epochs`` passes over shuffled minibatches. ``log π_old`` and ``V_old`` are computed by the
same function, at the same temperature and on the very same minibatches as the first update, so the
ratio π/π_old of the first update is exactly 1. The KL logged (``kl``: Σ_t kl_t, mean over rows) is
the one in the reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from alignkit.api import ConfigError, LossOutput, RolloutBatch, RunContext, UpdatePlan, row_means, token_means
from alignkit.rl import (
    KL_ESTIMATORS,
    ISCorrectionOptions,
    OnlineEval,
    SamplerCorrection,
    gae,
    masked_mean,
    masked_whiten,
    reference_logprobs,
    response_mask,
    sampling_rollout,
    scalar_rewards,
    sequence_kl,
    weighted_advantages,
)

from .kl_control import KLController
from .losses import ppo_clip, value_clip
from .value import CRITICS


@dataclass
class PPOConfig(ISCorrectionOptions):
    """``method=ppo`` options (and the ``is_*`` options of :class:`alignkit.rl.ISCorrectionOptions`).

    Attributes:
        name: ``ppo``.
        critic: ``shared`` (value head on the policy trunk) or ``separate`` (a critic LM copied
            from the initial policy, with its own head).
        kl_coef: β of the per-token KL penalty in the reward (initial value when adaptive).
        kl_estimator: ``k1`` (log π − log π_ref), ``k2`` or ``k3`` (Schulman 2020).
        kl_target: adaptive β towards this KL per completion (Ziegler et al. 2019); null: fixed β.
        kl_horizon: rows over which the adaptive β moves by at most 20%.
        gamma: GAE discount γ.
        lam: GAE λ.
        clip: ε of the clipped surrogate.
        value_clip: ε of the clipped value loss (in reward units).
        vf_coef: weight c_v of the value loss.
        entropy_coef: weight c_H of the entropy bonus.
        ppo_epochs: passes over each rollout.
        minibatch_size: rows per update (0: the whole rollout). One update = one micro-batch of the
            loop: ``trainer.grad_accum`` of them make an optimizer step.
        whiten_advantages: normalise advantages over the rollout's completion tokens.
        value_lr: learning rate of the value head / critic (null: the policy's).
    """

    name: str = "ppo"
    critic: str = "shared"
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    kl_target: Optional[float] = None
    kl_horizon: int = 10_000
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    ppo_epochs: int = 2
    minibatch_size: int = 0
    whiten_advantages: bool = True
    value_lr: Optional[float] = None


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(N,) position of the last True of each row of a (N, T) right-padded completion mask."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (N, T)
    return torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=1).values  # (N,)


class PPOObjective:
    """Clipped PPO with a value function, on ``rollout=generate`` batches."""

    def __init__(self, ctx: RunContext) -> None:
        cfg = ctx.cfg.method
        if cfg.critic not in CRITICS:
            raise ConfigError(f"method.critic={cfg.critic!r}; expected one of {sorted(CRITICS)}")
        if cfg.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"method.kl_estimator={cfg.kl_estimator!r}; expected one of {sorted(KL_ESTIMATORS)}")
        if cfg.ppo_epochs < 1 or cfg.minibatch_size < 0:
            raise ConfigError("method.ppo_epochs must be >= 1 and method.minibatch_size >= 0")
        self.ctx, self.cfg = ctx, cfg
        self.temperature = sampling_rollout(ctx, "ppo").temperature
        self.kl_estimator = cfg.kl_estimator
        self.held_out = OnlineEval(ctx, self.temperature, cfg.kl_estimator)
        self.kl = KLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        self.critic = CRITICS[cfg.critic](ctx.policy).to(ctx.device)
        self.shuffle = torch.Generator().manual_seed(ctx.cfg.trainer.seed + 7_919)
        self.correction = SamplerCorrection(ctx.registry, cfg)

    # ------------------------------------------------------------------ loop hooks
    def extra_parameters(self) -> list[Any]:
        params = [p for p in self.critic.parameters() if p.requires_grad]
        if self.cfg.value_lr is None:
            return params
        return [{"params": params, "lr": float(self.cfg.value_lr)}]

    def weight(self, batch: RolloutBatch) -> float:
        """Units: completion tokens (the policy, value and entropy terms are all token means)."""
        return float(response_mask(batch).sum())

    def evaluate(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        return self.held_out.evaluate(batch)

    def summarize(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        return self.held_out.summarize(values)

    def _chunks(self, n: int) -> list[torch.Tensor]:
        size = self.cfg.minibatch_size or n
        order = torch.randperm(n, generator=self.shuffle)  # (N,)
        return [order[i:i + size] for i in range(0, n, size)]

    def _forward(self, batch: RolloutBatch, entropy: bool) -> Any:
        return self.critic(self.ctx.policy, batch, temperature=self.temperature, entropy=entropy)

    @torch.no_grad()
    def _prepare(self, batch: RolloutBatch, chunks: list[torch.Tensor]) -> RolloutBatch:
        """Old log-probs, values, reference log-probs, rewards, advantages and returns of a rollout."""
        rewards = scalar_rewards(batch, self.ctx)  # (N,)
        n, width = batch.input_ids.shape
        device = batch.input_ids.device
        old_logps = torch.zeros(n, width - 1, device=device)  # (N, T-1)
        old_values = torch.zeros(n, width - 1, device=device)  # (N, T-1)
        ref_logps = torch.zeros(n, width - 1, device=device)  # (N, T-1)
        for rows in chunks:
            # The same sub-batches, in the same shapes, as the first epoch's updates: exact ratio 1.
            sub = batch.select(rows)
            out = self._forward(sub, entropy=False)
            w = out.logprobs.shape[1]
            rows = rows.to(device)
            old_logps[rows, :w] = out.logprobs
            old_values[rows, :w] = out.values
            ref_logps[rows, :w] = reference_logprobs(self.ctx, sub, self.temperature)
        mask = response_mask(batch)  # (N, T-1)
        kl_tokens = sequence_kl(old_logps, ref_logps, mask, self.kl_estimator)  # (N, T-1)
        beta = self.kl.value
        token_rewards = -beta * kl_tokens  # (N, T-1)
        last = last_token_index(mask)  # (N,)
        token_rewards[torch.arange(n, device=device), last] += rewards
        advantages, returns = gae(token_rewards, old_values, mask, gamma=self.cfg.gamma, lam=self.cfg.lam)  # (N, T-1)
        if self.cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)  # (N, T-1)
        kl_sum = kl_tokens.sum(dim=1)  # (N,)
        self.kl.update(float(kl_sum.mean()), n)
        return batch.with_extras(old_logps=old_logps, old_values=old_values, advantages=advantages, returns=returns,
                                 kl_tokens=kl_tokens, kl_coef=torch.full((n,), beta))

    def updates(self, batch: RolloutBatch) -> UpdatePlan:
        """``ppo_epochs`` passes of shuffled minibatches over one scored rollout."""
        n = batch.num_rows
        chunks = self._chunks(n)
        plan = chunks + [rows for _ in range(1, self.cfg.ppo_epochs) for rows in self._chunks(n)]
        return UpdatePlan(self._prepare(batch, chunks), plan)

    def __call__(self, batch: RolloutBatch) -> LossOutput:
        out, old = self._forward(batch, entropy=True), batch.extras
        mask = response_mask(batch)  # (B, T-1)
        weights, mismatch = self.correction.weights(old["old_logps"], batch.sampler_logps, mask)  # (B, T-1) or None
        pg_loss, stats = ppo_clip(out.logprobs, old["old_logps"], weighted_advantages(old["advantages"], weights), mask,
                                  clip=self.cfg.clip)
        vf_loss = value_clip(out.values, old["old_values"], old["returns"], mask, clip=self.cfg.value_clip)
        entropy = masked_mean(out.entropy, mask)  # ()
        loss = pg_loss + self.cfg.vf_coef * vf_loss - self.cfg.entropy_coef * entropy
        # Token means (the loss's unit) as plain values; per-completion ones say so.
        metrics = {"pg_loss": pg_loss.detach(), "value_loss": vf_loss.detach(), "entropy": entropy.detach(),
                   "value_mean": masked_mean(out.values.detach(), mask), **token_means(stats, mask),
                   **row_means({"kl": old["kl_tokens"].sum(dim=1), "kl_coef": old["kl_coef"],
                                "score": batch.rewards, "length": batch.completion_lengths()}), **mismatch}
        return LossOutput(loss, metrics)

    # ------------------------------------------------------------------ resume and saving
    def state_dict(self) -> dict[str, Any]:
        return {"critic": self.critic.state_dict(), "kl": self.kl.state_dict(), "shuffle": self.shuffle.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])
        self.kl.load_state_dict(state["kl"])
        self.shuffle.set_state(state["shuffle"])

    def save_extras(self, folder: Any) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().clone().contiguous() for k, v in self.critic.state_dict().items()}  # clone: tied weights
        save_file(state, str(folder / "critic.safetensors"), metadata={"critic": self.cfg.critic})


def build(ctx: RunContext) -> PPOObjective:
    """PPO: clipped surrogate + clipped value loss, GAE, per-token KL penalty to the reference."""
    return PPOObjective(ctx)
