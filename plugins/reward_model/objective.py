"""Reward-model training: a scalar head on the LM trunk, fit to pairs, rankings or attribute scores.

The record kind follows the loss: ``loss=bt`` (Bradley-Terry, Ouyang et al. 2022) trains on pairs,
``loss=kwise`` (Plackett-Luce, Zhu, Jordan & Jiao 2023 — the Starling RM objective) on ranked lists,
``loss=mse`` (SteerLM's attribute regression, Dong et al. 2023) on per-answer attribute scores.
Optional Bradley-Terry extras: the pair's ``margin`` (Llama 2), a centering term (Eisenstein et al.
2023), soft labels (RLAIF), and an LM regulariser α·NLL(chosen) sharing the same forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from alignkit import kernels
from alignkit.context import RunContext
from alignkit.errors import ConfigError
from alignkit.interfaces import LossOutput
from alignkit.logprobs import hidden_states, lm_head_weight
from alignkit.stats import mean_interval, preference_correct, preference_summary
from alignkit.tokenize import IGNORE_INDEX

from .head import RewardHead, at_last_token

KIND_OF_LOSS = {"bradley_terry": "pairs", "plackett_luce": "ranked", "pointwise_mse": "tokens"}


@dataclass
class RewardModelConfig:
    """``method=reward_model`` options.

    Attributes:
        name: ``reward_model``.
        attributes: names of the head's outputs; one (``reward``) for preference RMs, several for
            attribute regression (their values come from each row's ``scores``).
        lm_weight: α of the LM regulariser, α·NLL of the chosen answer (pairs only; 0 disables).
        freeze_trunk: train only the head on the frozen LM's features (a linear probe): far cheaper
            per step (no backward through the LM) and less prone to overfit small datasets.
    """

    name: str = "reward_model"
    attributes: list[str] = field(default_factory=lambda: ["reward"])
    lm_weight: float = 0.0
    freeze_trunk: bool = False


@dataclass
class BTLossConfig:
    """``loss=bt``: Bradley-Terry; ``use_margin`` subtracts each pair's ``margin`` field."""

    name: str = "bradley_terry"
    center_weight: float = 0.0
    use_margin: bool = False


@dataclass
class MSELossConfig:
    """``loss=mse``: squared error per attribute, masked where a score is missing."""

    name: str = "pointwise_mse"


def consumes(cfg: Any) -> str:
    """The record kind the configured loss trains on."""
    try:
        return KIND_OF_LOSS[cfg.loss.name]
    except KeyError:
        raise ConfigError(f"loss={cfg.loss.name} is not a reward-model loss; use one of bt, kwise, mse") from None


class RewardModelObjective:
    """Scores sequences with ``head(h_last)`` and applies the configured loss for the record kind."""

    def __init__(self, ctx: RunContext) -> None:
        cfg = ctx.cfg
        self.ctx = ctx
        self.kind = consumes(cfg)
        self.loss_cfg = cfg.loss
        self.loss_fn = ctx.registry.get("losses", cfg.loss.name, where="loss.name").fn
        self.lm_weight = float(cfg.method.lm_weight)
        if cfg.method.freeze_trunk:
            if self.lm_weight:
                raise ConfigError("method.lm_weight needs a trainable LM; it cannot be used with method.freeze_trunk=true")
            ctx.policy.requires_grad_(False)  # the loop then optimises only extra_parameters(): the head
        hidden_size = ctx.policy.config.hidden_size
        self.head = RewardHead(hidden_size, list(cfg.method.attributes)).to(ctx.device)
        if self.kind != "tokens" and len(self.head.attributes) != 1:
            raise ConfigError(f"method.attributes: loss={cfg.loss.name} trains one reward; got {len(self.head.attributes)} attributes")
        self._steps: dict[str, Callable[[dict], dict[str, torch.Tensor]]] = {
            "pairs": self._pairs, "ranked": self._ranked, "tokens": self._scored}

    # ------------------------------------------------------------------ plumbing for the loop
    def extra_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.head.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.head.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.head.load_state_dict(state)

    def save_extras(self, folder: Path) -> None:
        self.head.save(folder)

    def weight(self, batch: dict) -> float:
        return float(batch.get("num_pairs", len(batch.get("ranked_mask", batch["input_ids"]))))

    # ------------------------------------------------------------------ per-kind steps
    def _scores_and_hidden(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = hidden_states(self.ctx.policy, batch["input_ids"], batch["attention_mask"])  # (N, T, d)
        return self.head(at_last_token(hidden, batch["attention_mask"])), hidden  # (N, A), (N, T, d)

    def _pairs(self, batch: dict) -> dict[str, torch.Tensor]:
        pairs = batch["num_pairs"]
        scores, hidden = self._scores_and_hidden(batch)
        chosen, rejected = scores[:pairs, 0], scores[pairs:, 0]  # (B,) each
        margin = batch["margin"] if self.loss_cfg.get("use_margin", False) else None
        losses = self.loss_fn(chosen, rejected, margin=margin, center_weight=self.loss_cfg.get("center_weight", 0.0),
                              soft_labels=batch["label"])  # (B,)
        out = {"losses": losses, "margin": (chosen - rejected).detach(), "chosen": chosen.detach(), "rejected": rejected.detach()}
        if self.lm_weight:
            weight = lm_head_weight(self.ctx.policy)  # (V, d)
            stats = kernels.linear_token_stats(hidden[:pairs, :-1], weight, batch["labels"][:pairs, 1:],
                                               ignore_index=IGNORE_INDEX)
            out["lm_nll"] = -stats.sum.sum() / stats.count.sum().clamp_min(1)
        return out

    def _ranked(self, batch: dict) -> dict[str, torch.Tensor]:
        present = batch["ranked_mask"]  # (B, K)
        scores, _ = self._scores_and_hidden(batch)  # (N, 1), N = present.sum()
        rewards = torch.zeros(present.shape, dtype=scores.dtype, device=scores.device)  # (B, K)
        rewards = rewards.masked_scatter(present, scores[:, 0])
        losses = self.loss_fn(rewards, present)  # (B,)
        i, j = torch.triu_indices(present.shape[1], present.shape[1], offset=1, device=present.device)
        both = present[:, i] & present[:, j]  # (B, P) pairs (better i, worse j) present in the list
        diffs = (rewards[:, i] - rewards[:, j]).detach()  # (B, P)
        pair_correct = (preference_correct(diffs) * both).sum(1) / both.sum(1).clamp_min(1)  # (B,)
        last = present.long().sum(1) - 1  # (B,) index of the worst answer
        spread = (rewards[:, 0] - rewards.gather(1, last[:, None])[:, 0]).detach()  # (B,) best − worst
        return {"losses": losses, "correct": pair_correct, "margin": spread}

    def _scored(self, batch: dict) -> dict[str, torch.Tensor]:
        names = self.head.attributes
        targets = torch.tensor([[float("nan") if s.get(a) is None else s[a] for a in names] for s in batch["scores"]],
                               device=batch["input_ids"].device)  # (B, A)
        present = ~torch.isnan(targets)
        if not present.any(dim=1).all():
            missing = [i for i, row in enumerate(present.any(dim=1).tolist()) if not row]
            raise ConfigError(f"method.attributes={names}: {len(missing)} rows of this batch have none of them in 'scores'")
        scores, _ = self._scores_and_hidden(batch)  # (B, A)
        losses = self.loss_fn(scores, torch.nan_to_num(targets), present)  # (B,)
        return {"losses": losses, "mse": losses.detach()}

    # ------------------------------------------------------------------ objective
    def __call__(self, batch: dict) -> LossOutput:
        out = self._steps[self.kind](batch)
        loss = out["losses"].mean()
        metrics: dict[str, Any] = {}
        if "lm_nll" in out:
            loss = loss + self.lm_weight * out["lm_nll"]
            metrics["lm_nll"] = out["lm_nll"].detach()
        if "margin" in out:
            metrics["margin"] = out["margin"].mean()
            metrics["accuracy"] = out.get("correct", preference_correct(out["margin"])).mean()
        return LossOutput(loss, metrics)

    def evaluate(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self._steps[self.kind](batch)
        values = {"loss": out["losses"].detach()}
        if "margin" in out:
            values["margin"] = out["margin"]
            values["correct"] = out.get("correct", preference_correct(out["margin"]))
        return values

    def summarize(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        mean, low, high = mean_interval(values["loss"])
        summary = {"loss": mean, "loss_ci_low": low, "loss_ci_high": high}
        if "correct" in values:
            summary.update(preference_summary(values["correct"], values["margin"]))
        return summary


def build(ctx: RunContext) -> RewardModelObjective:
    """Reward model: a scalar head on the LM, trained with Bradley-Terry, K-wise Plackett-Luce or MSE."""
    return RewardModelObjective(ctx)
