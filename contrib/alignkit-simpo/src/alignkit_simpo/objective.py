"""``method=simpo``: SimPO on preference pairs, one forward over chosen and rejected rows together.

No reference model: the implicit reward of an answer is β times its mean log-prob per token, which is
exactly ``TokenStats.mean`` from :func:`alignkit.logprobs.sequence_logprobs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from alignkit.context import RunContext
from alignkit.interfaces import LossOutput
from alignkit.logprobs import sequence_logprobs

from .losses import simpo


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


def _correct(margin: torch.Tensor) -> torch.Tensor:
    # 1 where chosen wins, 0 where it loses, 1/2 on an exact tie (every pair at initialisation can tie).
    return (margin > 0).float() + 0.5 * (margin == 0).float()  # (B,)


class SimPOObjective:
    """SimPO loss on a pairs batch: rows ``[:B]`` are the chosen answers, rows ``[B:]`` the rejected."""

    def __init__(self, ctx: RunContext) -> None:
        cfg = ctx.cfg.method
        self.ctx = ctx
        self.beta, self.gamma = float(cfg.beta), float(cfg.gamma)
        self.label_smoothing, self.sft_weight = float(cfg.label_smoothing), float(cfg.sft_weight)

    def _forward(self, batch: dict) -> dict[str, torch.Tensor]:
        pairs = batch["num_pairs"]
        stats = sequence_logprobs(self.ctx.policy, batch)  # mean / sum / count: (2B,)
        chosen, rejected = stats.mean[:pairs], stats.mean[pairs:]  # (B,) each
        losses = simpo(chosen, rejected, beta=self.beta, gamma=self.gamma, label_smoothing=self.label_smoothing)
        return {"losses": losses,  # (B,)
                "chosen_reward": self.beta * chosen.detach(),  # (B,)
                "rejected_reward": self.beta * rejected.detach(),  # (B,)
                "chosen_sum": stats.sum[:pairs], "chosen_count": stats.count[:pairs]}

    def weight(self, batch: dict) -> float:
        # Gradient accumulation weighs micro-batches by pairs, so 4 x 1 equals 1 x 4.
        return float(batch["num_pairs"])

    def __call__(self, batch: dict) -> LossOutput:
        out = self._forward(batch)
        loss = out["losses"].mean()
        margin = out["chosen_reward"] - out["rejected_reward"]  # (B,)
        metrics: dict[str, Any] = {"rewards_chosen": out["chosen_reward"].mean(),
                                   "rewards_rejected": out["rejected_reward"].mean(),
                                   "margin": margin.mean(), "accuracy": _correct(margin).mean()}
        if self.sft_weight:
            nll = -out["chosen_sum"].sum() / out["chosen_count"].sum().clamp_min(1)
            loss = loss + self.sft_weight * nll
            metrics["sft_nll"] = nll.detach()
        return LossOutput(loss, metrics)

    def evaluate(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self._forward(batch)
        margin = out["chosen_reward"] - out["rejected_reward"]
        return {"loss": out["losses"], "margin": margin, "accuracy": _correct(margin)}  # (B,) each

    def summarize(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"loss": float(values["loss"].mean()), "accuracy": float(values["accuracy"].mean()),
                "margin": float(values["margin"].mean()), "pairs": float(values["loss"].numel())}


def build(ctx: RunContext) -> SimPOObjective:
    """SimPO: reference-free, length-normalised preference optimisation on pairs (Meng et al. 2024)."""
    return SimPOObjective(ctx)
