"""Built-in method ``reward_model``, scorer ``reward_model``, and the Bradley-Terry / MSE losses."""

from __future__ import annotations

from alignkit.api import LossSpec, MethodSpec, ScorerSpec, hookimpl

from . import losses, objective, scorer


@hookimpl
def register_methods(register):
    register(MethodSpec(name="reward_model", build=objective.build, consumes=objective.consumes,
                        schema=objective.RewardModelConfig, loss_family="reward-model", term_options=("method.lm_weight=1", "loss.center_weight=0.5")))


@hookimpl
def register_losses(register):
    register(LossSpec(name="bradley_terry", fn=losses.bradley_terry, schema=objective.BTLossConfig, family="reward-model",
                      consumes="pairs", takes=("margin", "soft_labels"), aliases=("bt",)))
    register(LossSpec(name="plackett_luce", fn=losses.plackett_luce, schema=objective.KwiseLossConfig,
                      family="reward-model", consumes="ranked", aliases=("kwise",)))
    register(LossSpec(name="pointwise_mse", fn=losses.pointwise_mse, schema=objective.MSELossConfig, family="reward-model",
                      consumes="tokens", aliases=("mse",)))


@hookimpl
def register_scorers(register):
    register(ScorerSpec(name="reward_model", build=scorer.build, schema=scorer.RewardModelScorerConfig))


@hookimpl
def register_config_dirs():
    return "pkg://alignkit.plugins.reward_model.conf"
