"""Built-in method ``ppo`` and the PPO losses and estimators (GAE, clipped surrogate, clipped value, KL)."""

from __future__ import annotations

from alignkit.hookspecs import hookimpl
from alignkit.specs import LossSpec, MethodSpec

from . import losses, objective

_LOSSES = ("gae", "ppo_clip", "ppo_clip_per_token", "value_clip", "kl_k1", "kl_k2", "kl_k3", "kl_penalty")


@hookimpl
def register_methods(register):
    register(MethodSpec(name="ppo", build=objective.build, consumes="prompts", needs_reference=True,
                        schema=objective.PPOConfig))


@hookimpl
def register_losses(register):
    for name in _LOSSES:
        register(LossSpec(name=name, fn=getattr(losses, name)))
