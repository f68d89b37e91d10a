"""Built-in method ``sft``: supervised fine-tuning on completions."""

from __future__ import annotations

from alignkit.hookspecs import hookimpl
from alignkit.specs import LossSpec, MethodSpec

from . import losses, objective


@hookimpl
def register_methods(register):
    register(MethodSpec(name="sft", build=objective.build, consumes="tokens", schema=objective.SFTConfig))


@hookimpl
def register_losses(register):
    register(LossSpec(name="nll", fn=losses.nll))
