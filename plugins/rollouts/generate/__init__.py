"""Built-in rollout ``generate``: completions sampled from the policy (online methods)."""

from __future__ import annotations

from alignkit.api import RolloutSpec, hookimpl

from .rollout import GenerateConfig, build


@hookimpl
def register_rollouts(register):
    register(RolloutSpec(name="generate", build=build, schema=GenerateConfig))


@hookimpl
def register_config_dirs():
    return "pkg://alignkit.plugins.rollouts.generate.conf"
