"""Built-in advantage estimators for online methods (``method.advantage=<name>``; ``alignkit ls advantages``).

The math lives in :mod:`alignkit.rl` (shared, pure); this plugin only names it for the registry, so a
third-party estimator registered the same way is selectable by every online method that takes one.
"""

from __future__ import annotations

from alignkit.api import AdvantageSpec, hookimpl
from alignkit.rl import batch_normalized_advantages, group_normalized_advantages, no_baseline, rloo_advantages


@hookimpl
def register_advantages(register):
    register(AdvantageSpec(name="group_norm", fn=group_normalized_advantages, needs_groups=True,
                           takes=("scale_by_std",),
                           summary="GRPO: (r − group mean) / (group std + eps); scale_by_std=false: mean only (Dr. GRPO)"))
    register(AdvantageSpec(name="rloo", fn=rloo_advantages, needs_groups=True,
                           summary="RLOO: r − the mean of the prompt's other k − 1 rewards (Ahmadian et al. 2024)"))
    register(AdvantageSpec(name="reinforce_pp", fn=batch_normalized_advantages,
                           summary="REINFORCE++: (r − batch mean) / (batch std + eps) (Hu et al. 2025)"))
    register(AdvantageSpec(name="none", fn=no_baseline, summary="plain REINFORCE: A = r (Williams 1992)"))
