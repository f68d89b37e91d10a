"""Built-in rollout ``dataset``: offline batches from the data config."""

from __future__ import annotations

from alignkit.api import RolloutSpec, hookimpl

from .rollout import DatasetRolloutConfig, build


@hookimpl
def register_rollouts(register):
    register(RolloutSpec(name="dataset", build=build, schema=DatasetRolloutConfig))


@hookimpl
def register_config_dirs():
    return "pkg://alignkit.plugins.rollouts.dataset.conf"
