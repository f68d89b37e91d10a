"""DPO-family training on preference pairs: one concatenated forward, reference cached or frozen.

Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward
Model" (https://arxiv.org/abs/2305.18290). With h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) −
log π_ref(y_r)), the loss is a function of β·h chosen by ``loss=``: ``dpo`` −log σ(βh), ``cdpo``
(label smoothing), ``ipo`` (h − 1/2τ)², ``robust`` (Chowdhury et al. 2024), or any registered loss
with the same four-tensor signature. Implicit rewards β(log π − log π_ref) give the held-out
preference accuracy and margin.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
from omegaconf import OmegaConf

from alignkit.context import RunContext
from alignkit.errors import ConfigError
from alignkit.interfaces import LossOutput
from alignkit.logprobs import sequence_logprobs
from alignkit.reference import ReferenceLogprobs
from alignkit.stats import preference_correct, preference_summary

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


def bind_pair_loss(fn: Callable[..., torch.Tensor], loss_cfg: Any, beta: float) -> Callable[..., torch.Tensor]:
    """The loss with its config's keyword options bound (and β, when it takes one)."""
    options = {k: v for k, v in OmegaConf.to_container(loss_cfg, resolve=True).items() if k != "name"}
    params = inspect.signature(fn).parameters
    if "beta" in params and "beta" not in options:
        options["beta"] = beta
    unknown = [k for k in options if k not in params]
    if unknown:
        raise ConfigError(f"loss.{unknown[0]}: loss '{loss_cfg.name}' takes no option '{unknown[0]}'")
    return partial(fn, **options)


class DPOObjective:
    """DPO-style pairwise loss over one concatenated chosen+rejected forward."""

    def __init__(self, ctx: RunContext) -> None:
        cfg = ctx.cfg
        self.ctx = ctx
        self.beta = float(cfg.method.beta)
        self.sft_weight = float(cfg.method.sft_weight)
        spec = ctx.registry.get("losses", cfg.loss.name, where="loss.name")
        self.loss_fn = bind_pair_loss(spec.fn, cfg.loss, self.beta)
        self.loss_name = cfg.loss.name
        self.takes_soft_labels = "soft_labels" in inspect.signature(spec.fn).parameters
        train = getattr(ctx.rollout, "train", None) or []
        if not self.takes_soft_labels and any(float(ex.get("label", 1.0)) != 1.0 for ex in train):
            raise self._no_soft_labels()  # say so before training, not at the first soft pair
        mode = cfg.method.reference
        self.reference = None if mode == "none" else ReferenceLogprobs(ctx, mode)

    def _forward(self, batch: dict, split: str) -> dict[str, torch.Tensor]:
        pairs = batch["num_pairs"]
        stats = sequence_logprobs(self.ctx.policy, batch)  # sums (2B,): chosen rows, then rejected rows
        policy_chosen, policy_rejected = stats.sum[:pairs], stats.sum[pairs:]  # (B,) each
        if self.reference is None:
            ref = torch.zeros_like(stats.sum)
        else:
            ref = self.reference(batch, split)  # (2B,)
        ref_chosen, ref_rejected = ref[:pairs], ref[pairs:]
        losses = self.loss_fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                              **self._soft_labels(batch))  # (B,)
        chosen_reward, rejected_reward = dpo_implicit_rewards(
            policy_chosen.detach(), policy_rejected.detach(), ref_chosen, ref_rejected, beta=self.beta)
        return {"losses": losses, "chosen_reward": chosen_reward, "rejected_reward": rejected_reward,
                "chosen_sum": stats.sum[:pairs], "chosen_count": stats.count[:pairs]}

    def _soft_labels(self, batch: dict) -> dict[str, torch.Tensor]:
        """``soft_labels`` for the loss when a pair's ``label`` is below 1 (hard labels keep the exact path)."""
        label = batch.get("label")
        if label is None or bool((label == 1).all()):
            return {}
        if not self.takes_soft_labels:
            raise self._no_soft_labels()
        return {"soft_labels": label}

    def _no_soft_labels(self) -> ConfigError:
        return ConfigError(f"loss={self.loss_name} takes no soft labels but the data has pairs with label < 1; "
                           "use loss=dpo (or drop the 'label' field)")

    def weight(self, batch: dict) -> float:
        return float(batch["num_pairs"])

    def __call__(self, batch: dict) -> LossOutput:
        out = self._forward(batch, "train")
        loss = out["losses"].mean()
        metrics: dict[str, Any] = {}
        if self.sft_weight:
            sft = -out["chosen_sum"].sum() / out["chosen_count"].sum().clamp_min(1)
            loss = loss + self.sft_weight * sft
            metrics["sft_nll"] = sft.detach()
        margin = out["chosen_reward"] - out["rejected_reward"]  # (B,)
        metrics.update({"rewards_chosen": out["chosen_reward"].mean(), "rewards_rejected": out["rejected_reward"].mean(),
                        "margin": margin.mean(), "accuracy": preference_correct(margin).mean()})
        return LossOutput(loss, metrics)

    def evaluate(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self._forward(batch, "eval")
        margin = out["chosen_reward"] - out["rejected_reward"]
        return {"loss": out["losses"], "margin": margin, "correct": preference_correct(margin),
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
