"""Built-in method ``sft``: supervised fine-tuning on completions (token-mean NLL, ``alignkit.losses.nll``)."""

from __future__ import annotations

from alignkit.api import MethodSpec, hookimpl

from . import objective


@hookimpl
def register_methods(register):
    register(MethodSpec(name="sft", build=objective.build, consumes="tokens", schema=objective.SFTConfig))


@hookimpl
def register_config_dirs():
    return "pkg://alignkit.plugins.sft.conf"
