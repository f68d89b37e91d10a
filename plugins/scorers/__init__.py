"""Built-in scorers: ``function`` (a Python callable), ``judge`` (an LLM judge), ``weighted_sum``, and the
verifiable rewards ``math`` (math-verify), ``exact_match``, ``regex`` / ``format`` and ``overlong``."""

from __future__ import annotations

from alignkit.api import JudgeScorerConfig, ScorerSpec, hookimpl

from . import function, judge, verifiable, weighted


@hookimpl
def register_scorers(register):
    register(ScorerSpec(name="function", build=function.build, schema=function.FunctionScorerConfig))
    register(ScorerSpec(name="judge", build=judge.build, schema=JudgeScorerConfig))
    register(ScorerSpec(name="weighted_sum", build=weighted.build, schema=weighted.WeightedSumConfig))
    register(ScorerSpec(name="math", build=verifiable.build_math, schema=verifiable.MathScorerConfig))
    register(ScorerSpec(name="exact_match", build=verifiable.build_exact_match, schema=verifiable.ExactMatchConfig))
    register(ScorerSpec(name="regex", build=verifiable.build_regex, schema=verifiable.RegexScorerConfig))
    register(ScorerSpec(name="format", build=verifiable.build_regex, schema=verifiable.RegexScorerConfig,
                        summary="reward if the completion has the expected format (default: a final \\boxed{...})"))
    register(ScorerSpec(name="overlong", build=verifiable.build_overlong, schema=verifiable.OverlongConfig))


@hookimpl
def register_config_dirs():
    return "pkg://alignkit.plugins.scorers.conf"
