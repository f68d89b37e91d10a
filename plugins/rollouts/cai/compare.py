"""Harmlessness measures: the feedback model's preference between two sets of answers, with counts.

For each prompt the feedback model compares answer X with answer Y under K sampled preference
principles (both orders when ``swap``), giving p = P(X better) as in :mod:`.feedback`. Reported:
wins (p > 1/2), losses (p < 1/2), ties; the win rate (wins + ties/2) / n with its 95% Wilson
interval (``alignkit.stats.wilson_interval``); and the mean p with a normal 95% interval.
"""

from __future__ import annotations

from typing import Any

import torch

from alignkit.api import mean_interval, wilson_interval

from .constitution import Constitution
from .feedback import FeedbackModel
from .prompts import Messages, sample_rl_principles

EVAL_SEED_SALT = 7_919  # comparison principles are drawn apart from training labels' principles


def preference_counts(p_x: list[float]) -> dict[str, float]:
    """Wins / losses / ties of X, win rate with Wilson interval, mean P(X better) with its interval."""
    wins = sum(p > 0.5 for p in p_x)
    losses = sum(p < 0.5 for p in p_x)
    ties = len(p_x) - wins - losses
    n = len(p_x)
    rate = (wins + 0.5 * ties) / n if n else float("nan")
    low, high = wilson_interval(wins + 0.5 * ties, n)
    mean, m_low, m_high = mean_interval(torch.tensor(p_x, dtype=torch.float64)) if n else (float("nan"),) * 3
    return {"n": n, "wins": wins, "losses": losses, "ties": ties, "win_rate": rate, "win_rate_ci_low": low,
            "win_rate_ci_high": high, "mean_p": mean, "mean_p_ci_low": m_low, "mean_p_ci_high": m_high}


def compare(feedback: FeedbackModel, constitution: Constitution, prompts: list[Messages], x: list[str], y: list[str],
            *, seed: int, principles_per_pair: int = 2, swap: bool = True) -> tuple[dict[str, float], list[dict]]:
    """Does the feedback model prefer ``x`` over ``y``? Identical answers count as ties (p = 1/2)."""
    principles = [sample_rl_principles(constitution, seed + EVAL_SEED_SALT, i, principles_per_pair)
                  for i in range(len(prompts))]
    differ = [i for i in range(len(prompts)) if x[i].strip() != y[i].strip()]
    labels = feedback.label(constitution, [prompts[i] for i in differ], [x[i] for i in differ], [y[i] for i in differ],
                            [principles[i] for i in differ], swap=swap)
    by_index = dict(zip(differ, labels))
    details, p_x = [], []
    for i in range(len(prompts)):
        judged = by_index.get(i)
        p = judged["p_first"] if judged else 0.5
        p_x.append(p)
        details.append({"index": i, "prompt": prompts[i], "x": x[i], "y": y[i], "p_x": p,
                        "judgements": judged["judgements"] if judged else [], "identical": judged is None})
    return preference_counts(p_x), details


def describe(summary: dict[str, Any], x: str, y: str) -> str:
    return (f"{x} vs {y}: n={summary['n']} wins={summary['wins']} losses={summary['losses']} ties={summary['ties']} "
            f"win rate {summary['win_rate']:.3f} [95% Wilson {summary['win_rate_ci_low']:.3f}, "
            f"{summary['win_rate_ci_high']:.3f}], mean P({x} better) {summary['mean_p']:.3f} "
            f"[{summary['mean_p_ci_low']:.3f}, {summary['mean_p_ci_high']:.3f}]")
