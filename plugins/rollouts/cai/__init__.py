"""Built-in Constitutional AI: ``rollout=cai`` (the critique -> revision and AI-feedback data, generated into
the run) and the ``alignkit cai`` command. The training itself is an existing method's: ``experiment=cai_sl``
is ``method=sft rollout=cai rollout.stage=sl``, ``experiment=cai_rl`` is ``method=dpo rollout=cai
rollout.stage=rl`` (or ``method=reward_model loss=bt``)."""

from __future__ import annotations

from alignkit.api import CommandSpec, RolloutSpec, hookimpl

from . import command, rollout, stages


@hookimpl
def register_rollouts(register):
    register(RolloutSpec(name="cai", build=rollout.build, schema=stages.CAIDataConfig, requires=("rollouts:dataset",)))


@hookimpl
def register_commands(register):
    register(CommandSpec(name="cai", run=command.main,
                         help="Constitutional AI data stages: cai generate --stage sl|rl, cai compare"))


@hookimpl
def register_config_dirs():
    return "pkg://alignkit.plugins.rollouts.cai.conf"
