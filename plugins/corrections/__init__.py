"""Built-in importance-sampling corrections of the train-inference mismatch (``method.is_correction=<name>``;
``alignkit ls is_corrections``).

The math lives in :mod:`alignkit.rl.correction` (shared, pure); this plugin names it for the registry, so
``ppo``, ``reinforce`` and ``grpo`` — and a third-party method using :class:`alignkit.rl.SamplerCorrection`
— take any registered correction by name.
"""

from __future__ import annotations

from alignkit.api import ISCorrectionSpec, hookimpl
from alignkit.rl import masked_is_weights, truncated_is_weights


@hookimpl
def register_is_corrections(register):
    register(ISCorrectionSpec(name="tis", fn=truncated_is_weights,
                              summary="truncated IS: w = min(π_old/π_sampler, C) (Yao et al. 2025)"))
    register(ISCorrectionSpec(name="mis", fn=masked_is_weights,
                              summary="masked IS: w = r if r <= C else 0 (Liu et al. 2025)"))
