"""Built-in rollout ``generate``: completions sampled from the policy (online methods)."""

from __future__ import annotations

from alignkit.hookspecs import hookimpl
from alignkit.specs import RolloutSpec

from .rollout import GenerateConfig, build


@hookimpl
def register_rollouts(register):
    register(RolloutSpec(name="generate", build=build, schema=GenerateConfig))
