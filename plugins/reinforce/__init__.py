"""Built-in method ``reinforce`` (REINFORCE / RLOO) and its losses and baselines."""

from __future__ import annotations

from alignkit.hookspecs import hookimpl
from alignkit.specs import LossSpec, MethodSpec

from . import losses, objective

_LOSSES = ("rloo_advantages", "group_normalized_advantages", "moving_average_baseline", "policy_gradient")


@hookimpl
def register_methods(register):
    register(MethodSpec(name="reinforce", build=objective.build, consumes="prompts", needs_reference=True,
                        schema=objective.ReinforceConfig))


@hookimpl
def register_losses(register):
    for name in _LOSSES:
        register(LossSpec(name=name, fn=getattr(losses, name)))
