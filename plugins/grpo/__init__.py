"""Built-in method ``grpo`` and the GRPO family's policy losses (grpo, dapo, dr_grpo, gspo, cispo)."""

from __future__ import annotations

from alignkit.api import LossSpec, MethodSpec, hookimpl

from . import losses, objective

_TAKES = ("epsilon_low", "epsilon_high", "norm_length")


@hookimpl
def register_methods(register):
    register(MethodSpec(name="grpo", build=objective.build, consumes="prompts", schema=objective.GRPOConfig,
                        loss_family="policy",
                        # every loss, and with them every aggregation mode (grpo's is seq_mean_token_mean)
                        term_options=("loss=dapo", "loss=dr_grpo", "loss=gspo", "loss=cispo",
                                      "loss.aggregation=seq_mean_token_sum", "method.kl_coef=0.1",
                                      "method.is_correction=tis")))


@hookimpl
def register_losses(register):
    for name in ("grpo", "dapo", "dr_grpo", "gspo", "cispo"):
        register(LossSpec(name=name, fn=getattr(losses, name), schema=objective.PolicyLossConfig, family="policy",
                          takes=_TAKES))


@hookimpl
def register_config_dirs():
    return "pkg://alignkit.plugins.grpo.conf"
