"""``alignkit eval rm``: a reward model's accuracy on any pairwise file.

Each pair (prompt, chosen, rejected) is scored r_c = r(prompt, chosen), r_r = r(prompt, rejected);
the margin is m = r_c − r_r and the pair counts as correct when m > 0 (½ on an exact tie). Reported:
accuracy with its Wilson 95% interval, the mean margin with its normal 95% interval, and n
(``alignkit.stats.preference_summary``, the same numbers training's held-out evaluation logs).
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any

import torch

from alignkit.api import get_registry, load_records, preference_correct, preference_summary, tie_scale


def reward_accuracy(scorer: Any, path: str, *, data_format: str = "auto", limit: int | None = None,
                    ) -> tuple[dict[str, float], list[dict]]:
    """Summary (accuracy, margin, intervals, n) and per-pair rows for a pairwise file.

    Args:
        scorer: a :class:`alignkit.plugins.reward_model.scorer.RewardModelScorer`.
        path: the data file (JSONL / JSON / Parquet / ``save_to_disk`` folder).
        data_format: any registered format whose records convert to pairs (``pairwise``, ``hh_rlhf``), or
            ``auto`` (inferred from the rows' fields).
        limit: only the first N pairs.
    """
    records = load_records(SimpleNamespace(format=data_format), "pairs", get_registry(), path=path, key="--data",
                           limit=limit)
    prompts = [r["prompt"] for r in records]
    # The completions as the data format parsed them (message lists): encoded exactly as training encodes them.
    bar = scorer.progress(len(records), len(records), desc="eval rm") if hasattr(scorer, "progress") else contextlib.nullcontext()
    with bar:  # total and ETA over both scorings
        chosen = scorer.score_texts(prompts, [r["chosen"] for r in records])  # (n,)
        rejected = scorer.score_texts(prompts, [r["rejected"] for r in records])  # (n,)
    margin = (chosen - rejected).double()  # (n,)
    summary = preference_summary(preference_correct(margin, tie_scale(chosen, rejected)), margin)
    rows = [{"where": r["_where"], "chosen_reward": float(c), "rejected_reward": float(x), "margin": float(c - x)}
            for r, c, x in zip(records, chosen.tolist(), rejected.tolist())]
    return summary, rows


def reward_stats(rows: list[dict]) -> dict[str, float]:
    """Mean and spread of the rewards (how the scale looks), from the per-pair rows."""
    values = torch.tensor([v for r in rows for v in (r["chosen_reward"], r["rejected_reward"])], dtype=torch.float64)
    return {"reward_mean": float(values.mean()), "reward_std": float(values.std()) if values.numel() > 1 else 0.0}
