"""Built-in method ``dpo`` and the DPO-family losses (DPO, cDPO, IPO, robust DPO)."""

from __future__ import annotations

from alignkit.api import LossSpec, MethodSpec, hookimpl

from . import losses, objective


@hookimpl
def register_methods(register):
    register(MethodSpec(name="dpo", build=objective.build, consumes="pairs", schema=objective.DPOConfig,
                        loss_family="preference", term_options=("method.sft_weight=1",)))


@hookimpl
def register_losses(register):
    # loss=cdpo is a preset of dpo (label_smoothing 0.1, conservative DPO).
    register(LossSpec(name="dpo", fn=losses.dpo, schema=objective.DPOLossConfig, family="preference",
                      takes=("beta", "soft_labels"), aliases=("cdpo",)))
    register(LossSpec(name="ipo", fn=losses.ipo, schema=objective.IPOLossConfig, family="preference"))
    register(LossSpec(name="robust_dpo", fn=losses.robust_dpo, schema=objective.RobustLossConfig,
                      family="preference", takes=("beta",), aliases=("robust",)))


@hookimpl
def register_config_dirs():
    return "pkg://alignkit.plugins.dpo.conf"
