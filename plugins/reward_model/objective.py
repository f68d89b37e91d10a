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

from alignkit.api import (
    IGNORE_INDEX,
    ConfigError,
    LossOutput,
    LossTerm,
    PairBatch,
    RankedBatch,
    RewardHead,
    RunContext,
    TokenBatch,
    at_last_token,
    hidden_states,
    mean_interval,
    nll,
    preference_correct,
    preference_summary,
    tie_scale,
    token_stats_with_hidden,
)


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
class KwiseLossConfig:
    """``loss=plackett_luce`` (alias ``kwise``): Plackett-Luce over ranked lists, best first."""

    name: str = "plackett_luce"


@dataclass
class MSELossConfig:
    """``loss=mse``: squared error per attribute, masked where a score is missing."""

    name: str = "pointwise_mse"


def reward_loss(cfg: Any) -> Any:
    """The :class:`~alignkit.specs.LossSpec` of the configured reward loss (family ``reward-model``)."""
    from alignkit.api import get_registry

    registry = get_registry()
    spec = registry.get("losses", cfg.loss.name, where="loss.name")
    if spec.family != "reward-model" or spec.consumes is None:
        names = [e.name for e in registry.entries("losses") if e.spec.family == "reward-model"]
        raise ConfigError(f"loss={cfg.loss.name} is not a reward-model loss; use one of {', '.join(names)}")
    return spec


def consumes(cfg: Any) -> str:
    """The record kind the configured loss trains on (its spec's ``consumes``)."""
    return reward_loss(cfg).consumes


class RewardModelObjective:
    """Scores sequences with ``head(h_last)`` and applies the configured loss for the record kind."""

    def __init__(self, ctx: RunContext) -> None:
        cfg = ctx.cfg
        self.ctx = ctx
        spec = reward_loss(cfg)
        self.kind = spec.consumes
        self.loss_options = spec.options(cfg.loss)  # e.g. center_weight; use_margin is the method's switch
        self.use_margin = bool(self.loss_options.pop("use_margin", False))
        self.loss_takes = spec.takes
        self.loss_fn = spec.fn
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

    def weight(self, batch: TokenBatch) -> dict[str, float]:
        """Units: pairs, ranked lists or scored answers for the reward loss; chosen-answer target tokens
        for the optional LM regulariser."""
        units = {"reward_loss": float(batch.num_examples)}
        if self.lm_weight and isinstance(batch, PairBatch):
            units["lm_nll"] = float(batch.chosen(batch.response_mask()).sum())
        return units

    # ------------------------------------------------------------------ per-kind steps
    def _scores_and_hidden(self, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = hidden_states(self.ctx.policy, batch.input_ids, batch.attention_mask,
                               prefix_groups=batch.prefix_groups())  # (N, T, d)
        return self.head(at_last_token(hidden, batch.attention_mask)), hidden  # (N, A), (N, T, d)

    def _scores_and_lm_stats(self, batch: PairBatch, rows: int) -> tuple[torch.Tensor, Any]:
        """Head scores (N, A) and the token stats of the first ``rows`` rows' labels, from one forward."""
        labels = batch.labels.clone()  # (N, T)
        labels[rows:] = IGNORE_INDEX  # the regulariser scores the chosen answers; the other rows skip the vocabulary
        stats, hidden = token_stats_with_hidden(self.ctx.policy, batch.input_ids, batch.attention_mask, labels,
                                                prefix_groups=batch.prefix_groups())
        return self.head(at_last_token(hidden, batch.attention_mask)), stats  # (N, A), TokenStats

    def _pairs(self, batch: PairBatch) -> dict[str, torch.Tensor]:
        pairs = batch.num_pairs
        stats = None  # the LM regulariser's, through the model's own output head, from the same forward
        if self.lm_weight:
            scores, stats = self._scores_and_lm_stats(batch, pairs)
        else:
            scores, _ = self._scores_and_hidden(batch)
        chosen, rejected = batch.chosen(scores[:, 0]), batch.rejected(scores[:, 0])  # (B,) each
        inputs = {"margin": batch.margin if self.use_margin else None, "soft_labels": batch.label}
        losses = self.loss_fn(chosen, rejected, **{k: v for k, v in inputs.items() if k in self.loss_takes},
                              **self.loss_options)  # (B,)
        out = {"losses": losses, "margin": (chosen - rejected).detach(), "chosen": chosen.detach(), "rejected": rejected.detach(),
               "correct": preference_correct(chosen - rejected, tie_scale(chosen, rejected))}
        if stats is not None:
            out["lm_nll"] = nll(stats.sum, stats.count)
        return out

    def _ranked(self, batch: RankedBatch) -> dict[str, torch.Tensor]:
        present = batch.ranked_mask  # (B, K)
        scores, _ = self._scores_and_hidden(batch)  # (N, 1), N = present.sum()
        rewards = torch.zeros(present.shape, dtype=scores.dtype, device=scores.device)  # (B, K)
        rewards = rewards.masked_scatter(present, scores[:, 0])
        losses = self.loss_fn(rewards, present, **self.loss_options)  # (B,)
        i, j = torch.triu_indices(present.shape[1], present.shape[1], offset=1, device=present.device)
        both = present[:, i] & present[:, j]  # (B, P) pairs (better i, worse j) present in the list
        diffs = (rewards[:, i] - rewards[:, j]).detach()  # (B, P)
        correct = preference_correct(diffs, tie_scale(rewards[:, i], rewards[:, j]))  # (B, P)
        pair_correct = (correct * both).sum(1) / both.sum(1).clamp_min(1)  # (B,)
        last = present.long().sum(1) - 1  # (B,) index of the worst answer
        spread = (rewards[:, 0] - rewards.gather(1, last[:, None])[:, 0]).detach()  # (B,) best − worst
        return {"losses": losses, "correct": pair_correct, "margin": spread}

    def _scored(self, batch: TokenBatch) -> dict[str, torch.Tensor]:
        names = self.head.attributes
        targets = torch.tensor([[float("nan") if s.get(a) is None else s[a] for a in names] for s in batch.scores],
                               device=batch.input_ids.device)  # (B, A)
        present = ~torch.isnan(targets)
        if not present.any(dim=1).all():
            missing = [i for i, row in enumerate(present.any(dim=1).tolist()) if not row]
            raise ConfigError(f"method.attributes={names}: {len(missing)} rows of this batch have none of them in 'scores'")
        scores, _ = self._scores_and_hidden(batch)  # (B, A)
        losses = self.loss_fn(scores, torch.nan_to_num(targets), present, **self.loss_options)  # (B,)
        return {"losses": losses, "mse": losses.detach()}

    # ------------------------------------------------------------------ objective
    def __call__(self, batch: TokenBatch) -> LossOutput:
        out = self._steps[self.kind](batch)
        terms: dict[str, Any] = {"reward_loss": out["losses"].mean()}
        if "lm_nll" in out:  # a token mean: its own units, normalised over the global batch by the loop
            terms["lm_nll"] = LossTerm(out["lm_nll"], self.lm_weight)
        metrics: dict[str, Any] = {}
        if "margin" in out:
            metrics["margin"] = out["margin"].mean()
            metrics["accuracy"] = out.get("correct", preference_correct(out["margin"])).mean()
        return LossOutput(metrics=metrics, terms=terms)

    def evaluate(self, batch: TokenBatch) -> dict[str, torch.Tensor]:
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
