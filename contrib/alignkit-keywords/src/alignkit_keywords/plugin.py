"""alignkit-keywords' hook implementations: the ``keywords`` scorer and its config folder."""

from __future__ import annotations

from alignkit.api import ScorerSpec, hookimpl

from . import reward


@hookimpl
def register_scorers(register):
    register(ScorerSpec(name="keywords", build=reward.build, schema=reward.KeywordsConfig))


@hookimpl
def register_config_dirs():
    return "pkg://alignkit_keywords.conf"
