"""One loss namespace: every name ``alignkit ls losses`` prints (and each alias) trains with ``loss=<name>``."""

from __future__ import annotations

import json
import math

import pytest

from alignkit.errors import ConfigError
from alignkit.plugin_manager import get_registry
from alignkit.testing import synthetic_data


def selectable() -> list[tuple[str, str]]:
    """(what the user types, the registered name) for every loss and alias."""
    return [(name, e.name) for e in get_registry().entries("losses") for name in (e.name, *e.spec.aliases)]


@pytest.mark.parametrize("typed, registered", selectable())
def test_every_listed_loss_trains(alignkit_run, tmp_path, typed, registered):
    registry = get_registry()
    spec = registry.get("losses", registered)
    method = next(e.name for e in registry.entries("methods") if e.spec.loss_family == spec.family)
    if spec.consumes == "tokens":  # scored answers: attribute scores per completion
        path = tmp_path / "scored.jsonl"
        path.write_text("".join(json.dumps({"prompt": f"Question {i}?", "completion": f"Answer {i}.",
                                            "scores": {"reward": float(i % 4)}}) + "\n" for i in range(8)))
        data = ["data=custom", f"data.path={path}", "data.format=scored", "data.eval_fraction=0.25"]
    else:
        data = synthetic_data(spec.consumes or registry.get("methods", method).consumes, tmp_path / "data", n=8)
    online = []
    if registry.get("methods", method).consumes == "prompts":  # sampled answers need a scorer and groups
        online = ["scorer=function", "scorer.fn=alignkit.plugins.scorers.rewards:brevity", "rollout.num_samples=2",
                  "rollout.max_new_tokens=4"]
    result = alignkit_run(f"method={method}", f"loss={typed}", *data, *online, "trainer.max_steps=1",
                          "trainer.batch_size=2", "data.max_length=64", "data.max_prompt_length=32")
    assert result.steps == 1
    assert all(math.isfinite(v) for k, v in result.eval_after.items() if "_ci_" not in k)


def test_a_loss_of_another_family_is_refused_with_the_right_list(alignkit_compose):
    with pytest.raises(ConfigError, match=r"loss=plackett_luce is not a loss of family 'preference' .*method=dpo takes: cdpo, dpo, ipo"):
        alignkit_compose("method=dpo", "loss=plackett_luce")
    with pytest.raises(ConfigError, match="method=sft takes no loss"):
        alignkit_compose("method=sft", "loss=dpo")


def test_only_selectable_losses_are_registered():
    for entry in get_registry().entries("losses"):
        assert entry.spec.family, f"loss '{entry.name}' has no family: no method can select it"
        assert any(m.spec.loss_family == entry.spec.family for m in get_registry().entries("methods")), entry.name
