"""DPO-family training on preference pairs: one concatenated forward, reference cached or frozen.

Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward
Model" (https://arxiv.org/abs/2305.18290). With h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) −
log π_ref(y_r)), the loss is a function of β·h chosen by ``loss=``: ``dpo`` −log σ(βh), ``cdpo``
(label smoothing), ``ipo`` (h − 1/2τ)², ``robust`` (Chowdhury et al. 2024), or any registered loss
of the ``preference`` family (same four-tensor signature; β and soft labels passed when its spec
``takes`` them). Implicit rewards β(log π − log π_ref) give the held-out
preference accuracy and margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from alignkit.api import (
    ConfigError,
    LossOutput,
    LossTerm,
    PairBatch,
    ReferenceLogprobs,
    RunContext,
    nll,
    preference_correct,
    preference_summary,
    sequence_logprobs,
    tie_scale,
)

from .losses import dpo_implicit_rewards


@dataclass
class DPOConfig:
    """``method=dpo`` options.

    Attributes:
        name: ``dpo``.
        beta: β, the strength of the implicit KL regularisation (also scales implicit rewards).
        reference: ``cached`` (reference log-probs computed once by the initial policy and stored in
            the run folder; no reference model in memory), ``model`` (a frozen copy scores every
            batch), or ``none`` (reference-free: π_ref terms are 0).
        sft_weight: weight of an extra NLL term on the chosen answers (RPO-style; 0 disables).
    """

    name: str = "dpo"
    beta: float = 0.1
    reference: str = "cached"
    sft_weight: float = 0.0


@dataclass
class DPOLossConfig:
    """``loss=dpo``: sigmoid DPO; ``label_smoothing`` ε > 0 makes it conservative DPO."""

    name: str = "dpo"
    label_smoothing: float = 0.0


@dataclass
class IPOLossConfig:
    """``loss=ipo``: identity preference optimisation with target margin 1/(2τ)."""

    name: str = "ipo"
    tau: float = 0.1


@dataclass
class RobustLossConfig:
    """``loss=robust``: robust DPO for labels flipped with probability ``label_smoothing``."""

    name: str = "robust_dpo"
    label_smoothing: float = 0.1


class DPOObjective:
    """DPO-style pairwise loss over one concatenated chosen+rejected forward."""

    def __init__(self, ctx: RunContext) -> None:
        cfg = ctx.cfg
        self.ctx = ctx
        self.beta = float(cfg.method.beta)
        self.sft_weight = float(cfg.method.sft_weight)
        spec = ctx.registry.get("losses", cfg.loss.name, where="loss.name")
        # The loss's own options (label_smoothing, tau) from cfg.loss, β when the loss takes it.
        self.loss_fn = partial(spec.fn, **spec.options(cfg.loss), **({"beta": self.beta} if "beta" in spec.takes else {}))
        self.loss_name = cfg.loss.name
        self.takes_soft_labels = "soft_labels" in spec.takes
        train = getattr(ctx.rollout, "train", None) or []
        if not self.takes_soft_labels and any(float(ex.get("label", 1.0)) != 1.0 for ex in train):
            raise self._no_soft_labels()  # say so before training, not at the first soft pair
        mode = cfg.method.reference
        self.reference = None if mode == "none" else ReferenceLogprobs(ctx, mode)

    def _forward(self, batch: PairBatch, split: str) -> dict[str, torch.Tensor]:
        stats = sequence_logprobs(self.ctx.policy, batch)  # sums (2B,): chosen rows, then rejected rows
        policy_chosen, policy_rejected = batch.chosen(stats.sum), batch.rejected(stats.sum)  # (B,) each
        # (2B,); the policy's own sums let the held-out cache fill from the evaluation before training.
        ref = (torch.zeros_like(stats.sum) if self.reference is None
               else self.reference(batch, split, policy_sums=stats.sum.detach()))
        ref_chosen, ref_rejected = batch.chosen(ref), batch.rejected(ref)  # (B,) each
        losses = self.loss_fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                              **self._soft_labels(batch))  # (B,)
        chosen_reward, rejected_reward = dpo_implicit_rewards(
            policy_chosen.detach(), policy_rejected.detach(), ref_chosen, ref_rejected, beta=self.beta)
        # The margin's operands, for the tie rule of preference_correct (rounding noise is no win).
        scale = self.beta * tie_scale(policy_chosen, ref_chosen, policy_rejected, ref_rejected)  # (B,)
        return {"losses": losses, "chosen_reward": chosen_reward, "rejected_reward": rejected_reward, "scale": scale,
                "chosen_sum": batch.chosen(stats.sum), "chosen_count": batch.chosen(stats.count)}

    def _soft_labels(self, batch: PairBatch) -> dict[str, torch.Tensor]:
        """``soft_labels`` for the loss when a pair's ``label`` is below 1 (hard labels keep the exact path)."""
        label = batch.label
        if label is None or bool((label == 1).all()):
            return {}
        if not self.takes_soft_labels:
            raise self._no_soft_labels()
        return {"soft_labels": label}

    def _no_soft_labels(self) -> ConfigError:
        return ConfigError(f"loss={self.loss_name} takes no soft labels but the data has pairs with label < 1; "
                           "use loss=dpo (or drop the 'label' field)")

    def weight(self, batch: PairBatch) -> dict[str, float]:
        """Units: pairs for the pair loss; chosen-answer target tokens for the optional SFT term."""
        units = {"pair_loss": float(batch.num_pairs)}
        if self.sft_weight:
            units["sft_nll"] = float(batch.chosen(batch.response_mask()).sum())
        return units

    def __call__(self, batch: PairBatch) -> LossOutput:
        out = self._forward(batch, "train")
        terms: dict[str, Any] = {"pair_loss": out["losses"].mean()}
        if self.sft_weight:  # a token mean: its own units, normalised over the global batch by the loop
            terms["sft_nll"] = LossTerm(nll(out["chosen_sum"], out["chosen_count"]), self.sft_weight)
        margin = out["chosen_reward"] - out["rejected_reward"]  # (B,)
        metrics = {"rewards_chosen": out["chosen_reward"].mean(), "rewards_rejected": out["rejected_reward"].mean(),
                   "margin": margin.mean(), "accuracy": preference_correct(margin, out["scale"]).mean()}
        return LossOutput(metrics=metrics, terms=terms)

    def evaluate(self, batch: PairBatch) -> dict[str, torch.Tensor]:
        out = self._forward(batch, "eval")
        margin = out["chosen_reward"] - out["rejected_reward"]
        return {"loss": out["losses"], "margin": margin, "correct": preference_correct(margin, out["scale"]),
                "chosen_reward": out["chosen_reward"], "rejected_reward": out["rejected_reward"]}

    def summarize(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        summary = {"loss": float(values["loss"].mean())}
        summary.update(preference_summary(values["correct"], values["margin"]))
        summary["rewards_chosen"] = float(values["chosen_reward"].mean())
        summary["rewards_rejected"] = float(values["rejected_reward"].mean())
        return summary


def build(ctx: RunContext) -> DPOObjective:
    """Direct preference optimisation (DPO / cDPO / IPO / robust) on preference pairs."""
    return DPOObjective(ctx)
