"""Built-in DPO family losses (DPO, cDPO, IPO, robust DPO)."""

from __future__ import annotations

from alignkit.hookspecs import hookimpl
from alignkit.specs import LossSpec

from . import losses

_LOSSES = ("dpo", "ipo", "robust_dpo", "dpo_implicit_rewards")


@hookimpl
def register_losses(register):
    for name in _LOSSES:
        register(LossSpec(name=name, fn=getattr(losses, name)))
