"""alignkit-simpo's hook implementations: the ``simpo`` method, the ``simpo`` loss, its config folder."""

from __future__ import annotations

from alignkit.hookspecs import hookimpl
from alignkit.specs import LossSpec, MethodSpec

from . import losses, objective


@hookimpl
def register_methods(register):
    register(MethodSpec(name="simpo", build=objective.build, consumes="pairs", needs_reference=False,
                        schema=objective.SimPOConfig))


@hookimpl
def register_losses(register):
    register(LossSpec(name="simpo", fn=losses.simpo))


@hookimpl
def register_config_dirs():
    return "pkg://alignkit_simpo.conf"
