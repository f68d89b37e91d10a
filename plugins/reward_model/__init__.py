"""Built-in method ``reward_model``, scorer ``reward_model``, and the Bradley-Terry / MSE losses."""

from __future__ import annotations

from alignkit.hookspecs import hookimpl
from alignkit.specs import LossSpec, MethodSpec, ScorerSpec

from . import losses, objective, scorer


@hookimpl
def register_methods(register):
    register(MethodSpec(name="reward_model", build=objective.build, consumes=objective.consumes,
                        schema=objective.RewardModelConfig))


@hookimpl
def register_losses(register):
    register(LossSpec(name="bradley_terry", fn=losses.bradley_terry, schema=objective.BTLossConfig))
    register(LossSpec(name="pointwise_mse", fn=losses.pointwise_mse, schema=objective.MSELossConfig))


@hookimpl
def register_scorers(register):
    register(ScorerSpec(name="reward_model", build=scorer.build, schema=scorer.RewardModelScorerConfig))
