"""Built-in rollout ``dataset``: offline batches from the data config."""

from __future__ import annotations

from alignkit.hookspecs import hookimpl
from alignkit.specs import RolloutSpec

from .rollout import DatasetRolloutConfig, build


@hookimpl
def register_rollouts(register):
    register(RolloutSpec(name="dataset", build=build, schema=DatasetRolloutConfig))
