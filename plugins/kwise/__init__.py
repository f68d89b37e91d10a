"""Built-in K-wise ranking loss (Plackett-Luce, the Starling reward-model objective)."""

from __future__ import annotations

from alignkit.hookspecs import hookimpl
from alignkit.specs import LossSpec

from . import losses

_LOSSES = ("plackett_luce", "pairwise_split")


@hookimpl
def register_losses(register):
    for name in _LOSSES:
        register(LossSpec(name=name, fn=getattr(losses, name)))
