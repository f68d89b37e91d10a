"""Built-in reward-model losses (Bradley-Terry, pointwise regression)."""

from __future__ import annotations

from alignkit.hookspecs import hookimpl
from alignkit.specs import LossSpec

from . import losses

_LOSSES = ("bradley_terry", "pointwise_mse")


@hookimpl
def register_losses(register):
    for name in _LOSSES:
        register(LossSpec(name=name, fn=getattr(losses, name)))
