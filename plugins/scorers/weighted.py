"""``scorer=weighted_sum``: r = Σ_i w_i · r_i over any registered scorers (reward models, functions,
judges, other sums), each configured like on its own plus a ``weight``::

    scorer:
      name: weighted_sum
      components:
        brevity: {name: function, fn: my_pkg.rewards:brevity, weight: 1.0}
        helpful: {name: judge, weight: 0.5}

``components`` is a mapping label -> config (override one on the command line with
``scorer.components.helpful.weight=0.2``) or a list of configs
(``scorer.components='[{name: function, fn: m:f}, {name: judge, weight: 0.5}]'``). Each component's
options are checked against that scorer's schema, and an error names the component's config key.
"""

from __future__ import annotations

from dataclasses import dataclass, is_dataclass
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from alignkit.api import AlignkitError, ConfigError, RolloutBatch, RunContext, TrainingError, as_rewards


@dataclass
class WeightedSumConfig:
    """``scorer=weighted_sum`` options.

    Attributes:
        name: ``weighted_sum``.
        components: label -> scorer config with an optional ``weight`` (default 1.0), or a list of
            such configs. ``name`` picks any registered scorer (``alignkit ls scorers``).
    """

    name: str = "weighted_sum"
    components: Any = None


def _entries(components: Any) -> list[tuple[str, Any]]:
    if components is None:
        return []
    if isinstance(components, (DictConfig, dict)):
        return [(f"scorer.components.{label}", cfg) for label, cfg in components.items()]
    if isinstance(components, (ListConfig, list)):
        return [(f"scorer.components[{i}]", cfg) for i, cfg in enumerate(components)]
    raise ConfigError("scorer.components must be a mapping label -> scorer config or a list of scorer configs")


def component_config(registry: Any, key: str, raw: Any) -> tuple[Any, float, Any]:
    """(spec, weight, typed config) of one component; ConfigError naming ``key`` when it is wrong."""
    raw = OmegaConf.create(OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw) else dict(raw))
    if "name" not in raw:
        raise ConfigError(f"{key}: no 'name'; pick a scorer ({', '.join(registry.names('scorers'))})")
    weight = raw.pop("weight", 1.0)
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}.weight={weight!r}: not a number") from None
    spec = registry.get("scorers", raw.name, where=f"{key}.name")
    schema = getattr(spec, "schema", None)
    if schema is not None and is_dataclass(schema):
        try:
            typed = OmegaConf.merge(OmegaConf.structured(schema), raw)
        except Exception as exc:  # noqa: BLE001 - OmegaConf validation errors
            reason = str(exc).splitlines()[0]
            field_key = getattr(exc, "full_key", "")
            raise ConfigError(f"{key}.{field_key}: {reason}" if field_key else f"{key}: {reason}") from None
    else:
        typed = raw
    return spec, weight, typed


class WeightedSumScorer:
    """Σ_i w_i · scorer_i(batch); component errors name the component's config key."""

    def __init__(self, components: list[tuple[str, str, float, Any]]) -> None:
        if not components:
            raise ConfigError("scorer=weighted_sum needs at least one entry in scorer.components")
        self.components = components
        self.last_components: dict[str, float] = {}

    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        n = len(batch.completions)
        total = torch.zeros(n)  # (N,)
        self.last_components = {}
        for key, name, weight, scorer in self.components:
            try:
                rewards = as_rewards(scorer(batch), n, f"scorer '{name}'")  # (N,)
            except TrainingError as exc:
                raise TrainingError(f"{key}: {exc}") from None
            total = total + weight * rewards.cpu()
            self.last_components[key] = float(rewards.mean())
        return total


def build(ctx: RunContext, cfg: Any) -> WeightedSumScorer:
    """A weighted sum of any registered scorers (scorer.components with weights)."""
    built = []
    for key, raw in _entries(cfg.components):
        spec, weight, typed = component_config(ctx.registry, key, raw)
        try:
            scorer = spec.build(ctx, typed)
        except AlignkitError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        built.append((key, str(typed.name), weight, scorer))
    return WeightedSumScorer(built)
