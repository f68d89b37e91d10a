"""alignkit-orpo's hook implementations (nothing else lives here)."""

from alignkit.api import LossSpec, MethodSpec, hookimpl

from . import losses, objective

LOSS_FAMILY = "odds-ratio"  # losses called as fn(chosen mean log-probs (P,), rejected (P,)) -> (P,)


@hookimpl
def register_methods(register):
    register(MethodSpec(
        name="orpo",
        build=objective.build,
        consumes="pairs",
        schema=objective.ORPOConfig,
        loss_family=LOSS_FAMILY,
        summary="ORPO: NLL of the chosen answer + λ·odds-ratio preference loss, no reference model.",
    ))


@hookimpl
def register_losses(register):
    register(LossSpec(name="orpo_odds_ratio", fn=losses.orpo_odds_ratio_loss, family=LOSS_FAMILY))


@hookimpl
def register_config_dirs():
    return "pkg://alignkit_orpo.conf"
