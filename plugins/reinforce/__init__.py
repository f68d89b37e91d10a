"""Built-in REINFORCE losses and baselines (RLOO, group-normalised, moving average)."""

from __future__ import annotations

from alignkit.hookspecs import hookimpl
from alignkit.specs import LossSpec

from . import losses

_LOSSES = ("rloo_advantages", "group_normalized_advantages", "moving_average_baseline", "policy_gradient")


@hookimpl
def register_losses(register):
    for name in _LOSSES:
        register(LossSpec(name=name, fn=getattr(losses, name)))
