"""alignkit-simpo's hook implementations: the ``simpo`` method, the ``simpo`` loss, its config folder."""

from __future__ import annotations

from alignkit.api import LossSpec, MethodSpec, hookimpl

from . import losses, objective


@hookimpl
def register_methods(register):
    register(MethodSpec(name="simpo", build=objective.build, consumes="pairs",
                        schema=objective.SimPOConfig, loss_family="simpo", term_options=("method.sft_weight=1",)))


@hookimpl
def register_losses(register):
    register(LossSpec(name="simpo", fn=losses.simpo, family="simpo", takes=("beta", "gamma", "label_smoothing")))


@hookimpl
def register_config_dirs():
    return "pkg://alignkit_simpo.conf"
