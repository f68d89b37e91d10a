"""Built-in method ``reinforce`` (REINFORCE / RLOO / group-normalised baselines)."""

from __future__ import annotations

from alignkit.api import MethodSpec, hookimpl

from . import objective


@hookimpl
def register_methods(register):
    register(MethodSpec(name="reinforce", build=objective.build, consumes="prompts",
                        schema=objective.ReinforceConfig, term_options=("method.is_correction=tis",)))


@hookimpl
def register_config_dirs():
    return "pkg://alignkit.plugins.reinforce.conf"
