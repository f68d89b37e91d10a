"""Built-in method ``steerlm`` (attribute-conditioned SFT), data format ``steerlm``, command ``alignkit steerlm``."""

from __future__ import annotations

from alignkit.api import CommandSpec, DataFormatSpec, MethodSpec, hookimpl

from . import commands, data_format, objective


@hookimpl
def register_methods(register):
    register(MethodSpec(name="steerlm", build=objective.build, consumes="tokens", schema=objective.SteerLMConfig,
                        condition=objective.condition, requires=("methods:sft",)))


@hookimpl
def register_data_formats(register):
    register(DataFormatSpec(name="steerlm", parse=data_format.parse_steerlm, produces="tokens", required=("attributes",),
                            keys=("prompt", "completion", "messages"), detect=data_format.detect_steerlm))


@hookimpl
def register_commands(register):
    register(CommandSpec(name="steerlm", run=commands.main,
                         help="SteerLM data: annotate with an attribute model, label by a function, measure steering",
                         requires=("scorers:reward_model",)))


@hookimpl
def register_config_dirs():
    return "pkg://alignkit.plugins.steerlm.conf"
