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

from alignkit.api import AlignkitError, ConfigError, ReportsStats, RolloutBatch, RunContext, TrainingError, as_rewards


@dataclass
class WeightedSumConfig:
    """``scorer=weighted_sum`` options.

    Attributes:
        name: ``weighted_sum``.
        components: label -> scorer config with an optional ``weight`` (default 1.0), or a list of
            such configs. ``name`` picks any registered scorer (``alignkit ls scorers``).
        normalize: standardise each component over the batch, (r − mean) / (std + 1e-6), before
            weighting (components on different scales then weigh as their weights say); a component
            whose rewards are all equal contributes 0.
    """

    name: str = "weighted_sum"
    components: Any = None
    normalize: bool = False


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


def standardize(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r − mean) / (std + eps) over the batch (N,); zeros when there are fewer than 2 or all are equal."""
    if rewards.numel() < 2:
        return torch.zeros_like(rewards)
    return (rewards - rewards.mean()) / (rewards.std() + eps)  # (N,)


class WeightedSumScorer:
    """Σ_i w_i · scorer_i(batch) (each standardised over the batch first when ``normalize``); component
    errors name the component's config key. Reports each component's mean reward and its own stats."""

    def __init__(self, components: list[tuple[str, str, float, Any]], normalize: bool = False) -> None:
        if not components:
            raise ConfigError("scorer=weighted_sum needs at least one entry in scorer.components")
        self.components, self.normalize = components, normalize
        self.last_components: dict[str, float] = {}

    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        n = batch.num_rows
        total = torch.zeros(n)  # (N,)
        self.last_components = {}
        for key, name, weight, scorer in self.components:
            try:
                rewards = as_rewards(scorer(batch), n, f"scorer '{name}'").cpu()  # (N,)
            except TrainingError as exc:
                raise TrainingError(f"{key}: {exc}") from None
            self.last_components[key] = float(rewards.mean())
            total = total + weight * (standardize(rewards) if self.normalize else rewards)
        return total

    def pop_stats(self) -> dict[str, float]:
        """Each component's mean reward in the last batch, and what each component reports itself."""
        stats = {f"scorer/{key.rsplit('.', 1)[-1]}_mean": v for key, v in self.last_components.items()}
        for _, _, _, scorer in self.components:
            if isinstance(scorer, ReportsStats):
                stats.update(scorer.pop_stats())
        return stats


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
    return WeightedSumScorer(built, normalize=bool(cfg.get("normalize", False)))
