"""alignkit-rl-extras' hook implementations: an advantage estimator, a policy loss, a config folder."""

from __future__ import annotations

from alignkit.api import AdvantageSpec, LossSpec, hookimpl

from . import math


@hookimpl
def register_advantages(register):
    register(AdvantageSpec(name="median", fn=math.median_advantages, needs_groups=True,
                           summary="r − the median of the prompt's k rewards (robust to one outlier)"))


@hookimpl
def register_losses(register):
    # family "policy": method=grpo takes it with loss=vanilla_pg, nothing in alignkit changes.
    register(LossSpec(name="vanilla_pg", fn=math.vanilla_pg, schema=math.VanillaPGConfig, family="policy",
                      takes=("norm_length",)))


@hookimpl
def register_config_dirs():
    return "pkg://alignkit_rl_extras.conf"
