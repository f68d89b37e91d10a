"""``method=orpo``: NLL of the chosen answer plus λ times ORPO's odds-ratio loss.

    L = NLL(y_c)  +  λ · mean_pairs −log σ(log odds(y_c) − log odds(y_r))

The two terms are measured in different units: the NLL is a mean over the chosen answers'
*tokens*, the odds-ratio loss a mean over *pairs*. The objective returns each term as a mean over
its own units of the micro-batch and ``weight`` says how many units each term has, so the training
loop normalises each term over the whole global batch (gradient accumulation and processes
included): batch 8 × accumulation 1 trains what batch 1 × accumulation 8 trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.api import (
    LossOutput,
    LossTerm,
    Mean,
    PairBatch,
    RunContext,
    nll,
    preference_correct,
    preference_summary,
    sequence_logprobs,
    tie_scale,
)

from .losses import log_odds


@dataclass
class ORPOConfig:
    """``method=orpo`` options.

    Attributes:
        name: ``orpo``.
        lam: λ, the weight of the odds-ratio term (the paper's λ; 0.1 in its experiments).
    """

    name: str = "orpo"
    lam: float = 0.1


class ORPOObjective:
    """ORPO on preference pairs, no reference model (Hong et al. 2024)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.lam = float(ctx.cfg.method.lam)
        # loss=orpo_odds_ratio by default (conf/method/orpo.yaml); any loss of the "odds-ratio"
        # family takes (chosen mean log-probs (P,), rejected mean log-probs (P,)) -> (P,).
        self.odds_ratio = ctx.registry.get("losses", ctx.cfg.loss.name).fn

    # -- training ----------------------------------------------------------------------------
    def weight(self, batch: PairBatch) -> dict[str, float]:
        """Units of each term: chosen-answer tokens for ``nll``, pairs for ``odds_ratio``."""
        return {"nll": float(batch.chosen(batch.response_mask()).sum()), "odds_ratio": float(batch.num_pairs)}

    def __call__(self, batch: PairBatch) -> LossOutput:
        stats = sequence_logprobs(self.ctx.policy, batch)  # sum / mean / count per row, (2P,)
        chosen_nll = nll(batch.chosen(stats.sum), batch.chosen(stats.count))  # mean over chosen tokens
        chosen_mean, rejected_mean = batch.chosen(stats.mean), batch.rejected(stats.mean)  # (P,)
        odds = self.odds_ratio(chosen_mean, rejected_mean)  # (P,)
        with torch.no_grad():
            log_odds_ratio = log_odds(chosen_mean) - log_odds(rejected_mean)  # (P,)
        return LossOutput(
            terms={"nll": chosen_nll, "odds_ratio": LossTerm(odds.mean(), coef=self.lam)},
            # a mean over pairs, while the first term (nll) averages tokens: say the metric's own unit
            metrics={"log_odds_ratio": Mean(log_odds_ratio.mean(), batch.num_pairs)},
        )

    # -- held-out evaluation (alignkit.api.Evaluates) -------------------------------------------
    @torch.no_grad()
    def evaluate(self, batch: PairBatch) -> dict[str, torch.Tensor]:
        """Per-pair held-out values (P,).

        ``nll_sum`` / ``nll_tokens``: summed NLL and token count of the chosen answer (summarised
        as a token mean, like the training term); ``odds_ratio``: the pair's odds-ratio loss;
        ``margin``: λ·(log odds(y_c) − log odds(y_r)); ``correct``: 1 / 0 / ½ (tie) from
        :func:`alignkit.api.preference_correct` on the mean log-probs ℓ(y_c) − ℓ(y_r) (log odds is
        increasing in ℓ, so this is the sign of the margin, with alignkit's rounding-tie rule).
        """
        stats = sequence_logprobs(self.ctx.policy, batch)
        chosen_mean, rejected_mean = batch.chosen(stats.mean), batch.rejected(stats.mean)
        margin = self.lam * (log_odds(chosen_mean) - log_odds(rejected_mean))
        correct = preference_correct(chosen_mean - rejected_mean, tie_scale(chosen_mean, rejected_mean))
        return {
            "nll_sum": -batch.chosen(stats.sum).float(),
            "nll_tokens": batch.chosen(stats.count).float(),
            "odds_ratio": self.odds_ratio(chosen_mean, rejected_mean).float(),
            "margin": margin.float(),
            "correct": correct.float(),
        }

    def summarize(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Held-out ``loss`` = ``nll`` (token mean) + λ·``odds_ratio`` (pair mean), plus accuracy
        (ties count ½) and the mean margin, each with its interval (:func:`preference_summary`)."""
        tokens = float(values["nll_tokens"].sum())
        nll_mean = float(values["nll_sum"].sum()) / tokens if tokens > 0 else 0.0
        odds_ratio = float(values["odds_ratio"].mean())
        out = {"loss": nll_mean + self.lam * odds_ratio, "nll": nll_mean, "odds_ratio": odds_ratio}
        out.update(preference_summary(values["correct"], values["margin"]))
        return out


def build(ctx: RunContext) -> ORPOObjective:
    """ORPO: NLL of the chosen answer plus λ·odds-ratio loss, no reference model."""
    return ORPOObjective(ctx)
