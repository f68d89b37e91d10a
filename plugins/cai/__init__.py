"""Built-in Constitutional AI: ``method=cai``, ``rollout=cai`` and the ``alignkit cai`` command."""

from __future__ import annotations

from alignkit.hookspecs import hookimpl
from alignkit.specs import CommandSpec, MethodSpec, RolloutSpec

from . import command, objective, rollout, stages


@hookimpl
def register_methods(register):
    register(MethodSpec(name="cai", build=objective.build, consumes=objective.consumes, schema=objective.CAIConfig))


@hookimpl
def register_rollouts(register):
    register(RolloutSpec(name="cai", build=rollout.build, schema=stages.CAIDataConfig))


@hookimpl
def register_commands(register):
    register(CommandSpec(name="cai", run=command.main,
                         help="Constitutional AI data stages: cai generate --stage sl|rl, cai compare"))
