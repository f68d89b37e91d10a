"""Built-in scorers: ``function`` (a Python callable), ``judge`` (an LLM judge), ``weighted_sum``."""

from __future__ import annotations

from alignkit.api import JudgeScorerConfig, ScorerSpec, hookimpl

from . import function, judge, weighted


@hookimpl
def register_scorers(register):
    register(ScorerSpec(name="function", build=function.build, schema=function.FunctionScorerConfig))
    register(ScorerSpec(name="judge", build=judge.build, schema=JudgeScorerConfig))
    register(ScorerSpec(name="weighted_sum", build=weighted.build, schema=weighted.WeightedSumConfig))


@hookimpl
def register_config_dirs():
    return "pkg://alignkit.plugins.scorers.conf"
