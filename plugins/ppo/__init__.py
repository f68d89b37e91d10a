"""Built-in method ``ppo``: clipped surrogate + clipped value loss, GAE, per-token KL penalty."""

from __future__ import annotations

from alignkit.api import MethodSpec, hookimpl

from . import objective


@hookimpl
def register_methods(register):
    register(MethodSpec(name="ppo", build=objective.build, consumes="prompts",
                        schema=objective.PPOConfig, term_options=("method.entropy_coef=0.1", "method.is_correction=tis")))


@hookimpl
def register_config_dirs():
    return "pkg://alignkit.plugins.ppo.conf"
