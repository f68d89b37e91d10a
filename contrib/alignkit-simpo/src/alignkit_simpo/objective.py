"""``method=simpo``: SimPO on preference pairs, one forward over chosen and rejected rows together.

No reference model: the implicit reward of an answer is β times its mean log-prob per token, which is
exactly ``TokenStats.mean`` from :func:`alignkit.api.sequence_logprobs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from alignkit.api import (
    LossOutput,
    LossTerm,
    PairBatch,
    RunContext,
    nll,
    preference_correct,
    sequence_logprobs,
    tie_scale,
)


@dataclass
class SimPOConfig:
    """``method=simpo`` options (typed: ``method.beta=abc`` fails at composition).

    Attributes:
        name: ``simpo``.
        beta: β, the scale of the length-normalised reward.
        gamma: γ, the target reward margin between chosen and rejected answers.
        label_smoothing: ε, the assumed share of flipped labels (0 in the paper).
        sft_weight: weight of an extra NLL term on the chosen answers (CPO-SimPO style; 0 disables).
    """

    name: str = "simpo"
    beta: float = 2.0
    gamma: float = 1.0
    label_smoothing: float = 0.0
    sft_weight: float = 0.0


def _correct(out: dict[str, torch.Tensor]) -> torch.Tensor:
    # 1 where chosen wins, 0 where it loses, 1/2 on a tie: alignkit's tie rule, rounding noise is no win.
    margin = out["chosen_reward"] - out["rejected_reward"]  # (B,)
    return preference_correct(margin, tie_scale(out["chosen_reward"], out["rejected_reward"]))  # (B,)


class SimPOObjective:
    """SimPO loss on a :class:`~alignkit.api.PairBatch` (chosen rows, then rejected rows, one forward)."""

    def __init__(self, ctx: RunContext) -> None:
        cfg = ctx.cfg.method
        self.ctx = ctx
        self.beta, self.gamma = float(cfg.beta), float(cfg.gamma)
        self.label_smoothing, self.sft_weight = float(cfg.label_smoothing), float(cfg.sft_weight)
        self.loss_fn = ctx.registry.get("losses", ctx.cfg.loss.name, where="loss.name").fn  # loss=simpo

    def _forward(self, batch: PairBatch) -> dict[str, torch.Tensor]:
        stats = sequence_logprobs(self.ctx.policy, batch)  # mean / sum / count: (2P,)
        chosen, rejected = batch.chosen(stats.mean), batch.rejected(stats.mean)  # (P,) each
        losses = self.loss_fn(chosen, rejected, beta=self.beta, gamma=self.gamma, label_smoothing=self.label_smoothing)
        return {"losses": losses,  # (P,)
                "chosen_reward": self.beta * chosen.detach(),  # (P,)
                "rejected_reward": self.beta * rejected.detach(),  # (P,)
                "chosen_sum": batch.chosen(stats.sum), "chosen_count": batch.chosen(stats.count)}

    def weight(self, batch: PairBatch) -> dict[str, float]:
        """Units: pairs for the SimPO loss; chosen-answer target tokens for the optional SFT term."""
        units = {"pair_loss": float(batch.num_pairs)}
        if self.sft_weight:
            units["sft_nll"] = float(batch.chosen(batch.response_mask()).sum())
        return units

    def __call__(self, batch: PairBatch) -> LossOutput:
        out = self._forward(batch)
        terms: dict[str, Any] = {"pair_loss": out["losses"].mean()}
        if self.sft_weight:  # a token mean: the loop normalises it over the global batch's chosen tokens
            terms["sft_nll"] = LossTerm(nll(out["chosen_sum"], out["chosen_count"]), self.sft_weight)
        margin = out["chosen_reward"] - out["rejected_reward"]  # (P,)
        metrics: dict[str, Any] = {"rewards_chosen": out["chosen_reward"].mean(),
                                   "rewards_rejected": out["rejected_reward"].mean(),
                                   "margin": margin.mean(), "accuracy": _correct(out).mean()}
        return LossOutput(metrics=metrics, terms=terms)

    def evaluate(self, batch: PairBatch) -> dict[str, torch.Tensor]:
        out = self._forward(batch)
        margin = out["chosen_reward"] - out["rejected_reward"]
        return {"loss": out["losses"], "margin": margin, "accuracy": _correct(out)}  # (P,) each

    def summarize(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"loss": float(values["loss"].mean()), "accuracy": float(values["accuracy"].mean()),
                "margin": float(values["margin"].mean()), "pairs": float(values["loss"].numel())}


def build(ctx: RunContext) -> SimPOObjective:
    """SimPO: reference-free, length-normalised preference optimisation on pairs (Meng et al. 2024)."""
    return SimPOObjective(ctx)
