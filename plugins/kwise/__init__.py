"""Built-in K-wise ranking loss (Plackett-Luce, the Starling reward-model objective)."""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.hookspecs import hookimpl
from alignkit.specs import LossSpec

from . import losses


@dataclass
class KwiseLossConfig:
    """``loss=kwise`` (with ``method=reward_model``): Plackett-Luce over ranked lists, best first."""

    name: str = "plackett_luce"


@hookimpl
def register_losses(register):
    register(LossSpec(name="plackett_luce", fn=losses.plackett_luce, schema=KwiseLossConfig))
    register(LossSpec(name="pairwise_split", fn=losses.pairwise_split))
