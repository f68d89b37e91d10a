"""Built-in method ``dpo`` and the DPO-family losses (DPO, cDPO, IPO, robust DPO)."""

from __future__ import annotations

from alignkit.hookspecs import hookimpl
from alignkit.specs import LossSpec, MethodSpec

from . import losses, objective


@hookimpl
def register_methods(register):
    register(MethodSpec(name="dpo", build=objective.build, consumes="pairs", schema=objective.DPOConfig))


@hookimpl
def register_losses(register):
    register(LossSpec(name="dpo", fn=losses.dpo, schema=objective.DPOLossConfig))
    register(LossSpec(name="ipo", fn=losses.ipo, schema=objective.IPOLossConfig))
    register(LossSpec(name="robust_dpo", fn=losses.robust_dpo, schema=objective.RobustLossConfig))
    register(LossSpec(name="dpo_implicit_rewards", fn=losses.dpo_implicit_rewards))
