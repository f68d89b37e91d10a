"""``method=grpo``: group-relative policy optimisation on sampled completions, its losses and advantages
swappable by name.

Shao et al. 2024 (https://arxiv.org/abs/2402.03300) and its variants. For a rollout of P prompts with k
sampled completions each, scored by any scorer (a checker of verifiable answers, typically)::

    A        = advantage(r)            (method.advantage: group_norm, rloo, reinforce_pp, ... registered)
    ρ_t      = π_θ(y_t) / π_old(y_t)   (π_old: the policy that sampled, log-probs recorded by the training
                                        path at the sampling temperature, on the first update's micro-batches)
    L        = policy_loss(ρ, A)       (loss=grpo | dapo | dr_grpo | gspo | cispo | any registered ``policy`` loss,
                                        aggregated per its ``loss.aggregation``)
             + β · aggregate(kl_t)     (method.kl_coef > 0: per-token KL estimator to the reference, in the loss)

A ``policy`` loss is ``fn(logps, old_logps, advantages, mask, **options) -> (loss, stats)`` (shapes in
:mod:`alignkit.plugins.grpo.losses`) whose options (its ``loss/<name>.yaml``) include ``aggregation``;
the method passes ``epsilon_low`` / ``epsilon_high`` / ``norm_length`` when the spec ``takes`` them. An
advantage estimator is any registered ``AdvantageSpec``. So a new variant of either is a plugin.

Trained for ``method.num_iterations`` (μ) passes over the rollout's micro-batches (whole prompts,
``method.minibatch_size`` prompts each). The ratio of the first pass is exactly 1; with μ = 1, π_old
is the current policy's own log-probs, detached (no second forward). With ``kl_coef = 0`` no reference
model is loaded and no reference log-probs are computed. Rollout options of the family (DAPO's dynamic
sampling, overlong masking) are ``rollout.dynamic_sampling`` and ``rollout.mask_truncated``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from alignkit.api import (
    ConfigError,
    LossOutput,
    LossTerm,
    RolloutBatch,
    RunContext,
    UpdatePlan,
    row_means,
    sequence_logprobs,
    token_means,
)
from alignkit.rl import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    ISCorrectionOptions,
    OnlineEval,
    SamplerCorrection,
    aggregate,
    aggregation_units,
    kl_penalty,
    reference_logprobs,
    sampling_rollout,
    scalar_rewards,
    weighted_advantages,
)


@dataclass
class GRPOConfig(ISCorrectionOptions):
    """``method=grpo`` options (and the ``is_*`` options of :class:`alignkit.rl.ISCorrectionOptions`).

    Attributes:
        name: ``grpo``.
        advantage: a registered advantage estimator (``alignkit ls advantages``): ``group_norm`` (GRPO),
            ``rloo``, ``reinforce_pp``, ``none``.
        scale_by_std: ``group_norm`` divides by the group's reward std (false: Dr. GRPO's mean-only).
        epsilon_low: clip range below 1 of the importance ratio; null: the loss's own default (0.2 for
            grpo / dapo / dr_grpo, 3e-4 for gspo, none for cispo).
        epsilon_high: clip range above 1 (DAPO's clip-higher: 0.28); null: the loss's default.
        num_iterations: μ, passes over each rollout (the ratio moves away from 1 after the first).
        minibatch_size: prompts per micro-batch (0: the whole rollout); ``trainer.grad_accum`` of them
            make an optimizer step.
        kl_coef: β of the KL-to-reference term in the loss (0: no reference model at all).
        kl_estimator: ``k1`` | ``k2`` | ``k3`` (GRPO's is k3).
    """

    name: str = "grpo"
    advantage: str = "group_norm"
    scale_by_std: bool = True
    epsilon_low: Optional[float] = None
    epsilon_high: Optional[float] = None
    num_iterations: int = 1
    minibatch_size: int = 0
    kl_coef: float = 0.0
    kl_estimator: str = "k3"


@dataclass
class PolicyLossConfig:
    """``loss=<grpo | dapo | dr_grpo | gspo | cispo>``: how per-token losses are aggregated (the unit)."""

    name: str = "grpo"
    aggregation: str = "seq_mean_token_mean"


class GRPOObjective:
    """The GRPO family on ``rollout=generate`` batches: a registered policy loss and advantage estimator."""

    def __init__(self, ctx: RunContext) -> None:
        cfg = ctx.cfg.method
        if cfg.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"method.kl_estimator={cfg.kl_estimator!r}; expected one of {sorted(KL_ESTIMATORS)}")
        if cfg.num_iterations < 1 or cfg.minibatch_size < 0 or cfg.kl_coef < 0:
            raise ConfigError("method.num_iterations must be >= 1, method.minibatch_size >= 0, method.kl_coef >= 0")
        rollout = sampling_rollout(ctx, "grpo")
        self.ctx, self.cfg = ctx, cfg
        self.temperature, self.k = rollout.temperature, int(rollout.num_samples)
        loss = ctx.registry.get("losses", ctx.cfg.loss.name, where="loss.name")
        options = loss.options(ctx.cfg.loss)
        if options.get("aggregation") not in AGGREGATIONS:
            raise ConfigError(f"loss={loss.name}: a policy loss's options need 'aggregation', one of "
                              f"{', '.join(AGGREGATIONS)} (got {options.get('aggregation')!r})")
        self.aggregation = options["aggregation"]
        given = {"epsilon_low": cfg.epsilon_low, "epsilon_high": cfg.epsilon_high,
                 "norm_length": float(rollout.max_new_tokens)}
        self.loss_options = {**options, **{k: v for k, v in given.items() if v is not None and k in loss.takes}}
        self.loss_fn = loss.fn
        advantage = ctx.registry.get("advantages", cfg.advantage, where="method.advantage")
        if advantage.needs_groups and self.k < 2:
            raise ConfigError(f"method.advantage={cfg.advantage} compares the k samples of a prompt: set "
                              f"rollout.num_samples >= 2 (it is {self.k})")
        self.advantage_fn = advantage.fn
        self.advantage_options = {k: v for k, v in {"scale_by_std": cfg.scale_by_std}.items() if k in advantage.takes}
        self.held_out = OnlineEval(ctx, self.temperature, cfg.kl_estimator, with_kl=cfg.kl_coef > 0)
        self.correction = SamplerCorrection(ctx.registry, cfg)
        self.shuffle = torch.Generator().manual_seed(ctx.cfg.trainer.seed + 7_919)

    # ------------------------------------------------------------------ the loop's contract
    def weight(self, batch: RolloutBatch) -> dict[str, float]:
        """Units of the loss's aggregation (completion tokens for ``token_mean``, else completions with a
        counted token), for the policy term and the KL term alike."""
        units = aggregation_units(batch.response_mask(), self.aggregation)
        return {"policy_loss": units, **({"kl": units} if self.cfg.kl_coef > 0 else {})}

    def evaluate(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        return self.held_out.evaluate(batch)

    def summarize(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        return self.held_out.summarize(values)

    def state_dict(self) -> dict[str, Any]:
        return {"shuffle": self.shuffle.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shuffle.set_state(state["shuffle"])

    # ------------------------------------------------------------------ one rollout
    def updates(self, batch: RolloutBatch) -> UpdatePlan:
        """Advantages on the whole rollout, π_old (μ > 1) and reference log-probs (β > 0) on the first
        pass's micro-batches, then μ passes of whole-prompt micro-batches (later passes shuffled)."""
        rewards = scalar_rewards(batch, self.ctx)  # (N,)
        if batch.num_rows != batch.num_prompts * self.k:
            raise ConfigError(f"method=grpo: the rollout gave {batch.num_rows} rows for {batch.num_prompts} prompts, "
                              f"expected rollout.num_samples={self.k} per prompt")
        advantages = self.advantage_fn(rewards.view(batch.num_prompts, self.k), **self.advantage_options)  # (P, k)
        per_chunk = (self.cfg.minibatch_size or batch.num_prompts) * self.k
        n = batch.num_rows
        chunks = [torch.arange(i, min(i + per_chunk, n)) for i in range(0, n, per_chunk)]
        grouped = rewards.view(batch.num_prompts, self.k)  # (P, k)
        no_signal = (grouped == grouped[:, :1]).all(dim=1, keepdim=True).expand(-1, self.k)  # (P, k)
        extras = {"advantages": advantages.reshape(-1), "zero_signal": no_signal.reshape(-1).float()}  # (N,) each
        extras.update(self._recorded(batch, chunks))
        later = [chunks[i] for _ in range(1, self.cfg.num_iterations)
                 for i in torch.randperm(len(chunks), generator=self.shuffle).tolist()]
        return UpdatePlan(batch.with_extras(**extras), chunks + later)

    @torch.no_grad()
    def _recorded(self, batch: RolloutBatch, chunks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """(N, T−1) π_old (when μ > 1) and reference (when β > 0) log-probs, on the very micro-batches the
        first pass trains on (so the first pass's ratio is exactly 1)."""
        wanted = {"old_logps": self.cfg.num_iterations > 1, "ref_logps": self.cfg.kl_coef > 0}
        out = {name: torch.zeros(batch.num_rows, batch.input_ids.shape[1] - 1, device=batch.input_ids.device)
               for name, on in wanted.items() if on}  # (N, T-1) each
        for rows in chunks if out else []:
            sub, rows = batch.select(rows), rows.to(batch.input_ids.device)
            if "old_logps" in out:
                logps = sequence_logprobs(self.ctx.policy, sub, temperature=self.temperature).logprobs  # (r, w-1)
                out["old_logps"][rows, : logps.shape[1]] = logps
            if "ref_logps" in out:
                ref = reference_logprobs(self.ctx, sub, self.temperature)  # (r, w-1)
                out["ref_logps"][rows, : ref.shape[1]] = ref
        return out

    def __call__(self, batch: RolloutBatch) -> LossOutput:
        stats = sequence_logprobs(self.ctx.policy, batch, temperature=self.temperature)
        logps, mask = stats.logprobs, batch.response_mask()  # (B, T-1) each
        old = batch.extras.get("old_logps", logps.detach())  # μ = 1: the sampling policy is this one
        weights, mismatch = self.correction.weights(old, batch.sampler_logps, mask)  # (B, T-1) or None
        advantages = weighted_advantages(batch.extras["advantages"], weights)  # (B,) or (B, T-1)
        policy_loss, loss_stats = self.loss_fn(logps, old, advantages, mask, **self.loss_options)
        terms: dict[str, Any] = {"policy_loss": policy_loss}
        if self.cfg.kl_coef > 0:
            kl_tokens = kl_penalty(logps, batch.extras["ref_logps"], estimator=self.cfg.kl_estimator)  # (B, T-1)
            terms["kl"] = LossTerm(aggregate(kl_tokens, mask, self.aggregation, self.loss_options.get("norm_length")),
                                   self.cfg.kl_coef)
        # The loss's unit is tokens or completions (its aggregation): each metric says its own.
        metrics = {**token_means(loss_stats, mask),
                   **row_means({"score": batch.rewards, "advantage_abs": batch.extras["advantages"].abs(),
                                "length": batch.completion_lengths(), "ended": batch.ended,
                                # micro-batches hold whole groups: the row mean is the share of groups with equal rewards
                                "zero_signal_share": batch.extras["zero_signal"]}),
                   **mismatch}
        return LossOutput(terms=terms, metrics=metrics)


def build(ctx: RunContext) -> GRPOObjective:
    """GRPO family: a registered policy loss (grpo, dapo, dr_grpo, gspo, cispo) on group advantages."""
    return GRPOObjective(ctx)
