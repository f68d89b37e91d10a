"""``alignkit.rl``: the shared math and plumbing of online reinforcement learning on language models.

Neutral ground for every online method (``ppo``, ``reinforce``, third-party ones): no method owns it
and none imports another for it.

- :mod:`~alignkit.rl.masked`: ``masked_mean``, ``masked_whiten`` over valid tokens;
- :mod:`~alignkit.rl.kl`: the k1 / k2 / k3 KL estimators, ``kl_penalty``, ``sequence_kl``;
- :mod:`~alignkit.rl.advantages`: ``gae``, ``rloo_advantages``, ``group_normalized_advantages``,
  ``batch_normalized_advantages``, ``no_baseline``, ``moving_average_baseline`` (the registered
  estimators, ``alignkit ls advantages``, name these);
- :mod:`~alignkit.rl.aggregation`: ``aggregate`` / ``aggregation_units``, the reductions of GRPO-family
  per-token losses and the unit each averages over;
- :mod:`~alignkit.rl.correction`: the train-inference mismatch (``mismatch_stats``) and its importance-
  sampling corrections (``truncated_is_weights``, ``masked_is_weights``; ``SamplerCorrection`` applies the
  configured one, ``ISCorrectionOptions`` are the ``method.is_*`` fields);
- :mod:`~alignkit.rl.online`: ``sampling_rollout``, ``response_mask``, ``scalar_rewards``,
  ``reference_logprobs`` and ``OnlineEval`` (held-out reward, KL and length).
"""

from __future__ import annotations

from .advantages import (
                         batch_normalized_advantages,
                         gae,
                         group_normalized_advantages,
                         moving_average_baseline,
                         no_baseline,
                         rloo_advantages,
)
from .aggregation import AGGREGATIONS, aggregate, aggregation_units
from .correction import (
                         IS_LEVELS,
                         ISCorrectionOptions,
                         SamplerCorrection,
                         masked_is_weights,
                         mismatch_stats,
                         truncated_is_weights,
                         weighted_advantages,
)
from .kl import KL_ESTIMATORS, kl_k1, kl_k2, kl_k3, kl_penalty, sequence_kl
from .masked import masked_mean, masked_whiten
from .online import OnlineEval, reference_logprobs, response_mask, sampling_rollout, scalar_rewards

__all__ = ["AGGREGATIONS", "IS_LEVELS", "ISCorrectionOptions", "KL_ESTIMATORS", "SamplerCorrection",
           "masked_is_weights", "mismatch_stats", "truncated_is_weights", "weighted_advantages", "OnlineEval", "aggregate", "aggregation_units", "batch_normalized_advantages",
           "gae", "group_normalized_advantages", "kl_k1", "kl_k2", "kl_k3", "kl_penalty", "masked_mean",
           "masked_whiten", "moving_average_baseline", "no_baseline", "reference_logprobs", "response_mask",
           "rloo_advantages", "sampling_rollout", "scalar_rewards", "sequence_kl"]
