"""alignkit-keywords: the reward pinned by hand, the scorer conformance kit, and the scorer inside training."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from alignkit.testing import check_method, check_scorer
from alignkit_keywords.reward import keyword_reward


def cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignkit.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def registered(kind: str, name: str) -> bool:
    from alignkit.plugin_manager import get_registry

    return (kind, name) in get_registry()


# ----------------------------------------------------------------------------- the reward
def test_keyword_reward_hand_computed():
    texts = ["Paris is the capital of France.", "Sorry, I cannot say.", "paris paris PARIS, sorry", "Parisian food"]
    rewards = keyword_reward(texts, include=["Paris", "France"], exclude=["sorry"], weight=0.5)
    # 2 wanted -> 1.0 | 1 unwanted -> -0.5 | Paris once (repeats earn nothing) and sorry -> 0 | "Parisian" is no word match
    torch.testing.assert_close(rewards, torch.tensor([1.0, -0.5, 0.0, 0.0]))


def test_case_words_and_length_shaping():
    assert keyword_reward(["paris"], ["Paris"], case_sensitive=True).item() == 0.0
    assert keyword_reward(["Parisian"], ["Paris"], whole_words=False).item() == 1.0
    # 6 words, target 4: -0.5 * |6 - 4| / 4 = -0.25 ; plus one hit
    value = keyword_reward(["one two three four five Paris"], ["Paris"], target_words=4, length_weight=0.5).item()
    assert value == pytest.approx(0.75)


# ----------------------------------------------------------------------------- alignkit's conformance kit
def test_scorer_conformance():
    rewards = check_scorer("keywords", "scorer.include=[It]", "scorer.exclude=[not]")
    # check_scorer's batch alternates a refusal ("I will not answer") and an answer ("It is ...").
    assert rewards.tolist() == [-1.0, 1.0, -1.0, 1.0]


@pytest.mark.skipif(not registered("scorers", "weighted_sum"), reason="scorer=weighted_sum is not registered")
def test_composes_inside_weighted_sum():
    rewards = check_scorer("weighted_sum", "scorer.components={kw: {name: keywords, include: [It], weight: 2.0}}")
    assert rewards.tolist() == [0.0, 2.0, 0.0, 2.0]


def test_config_is_typed(alignkit_compose):
    from alignkit.errors import ConfigError

    cfg = alignkit_compose("scorer=keywords", "scorer.include=[a,b]")
    assert list(cfg.scorer.include) == ["a", "b"]
    with pytest.raises(ConfigError, match="config key scorer.weight"):
        alignkit_compose("scorer=keywords", "scorer.weight=heavy")


def test_alignkit_plugins_and_ls_show_the_scorer(tmp_path):
    report = json.loads(cli("plugins", cwd=tmp_path).stdout)
    [entry] = [p for p in report["plugins"] if p["distribution"] == "alignkit-keywords"]
    assert entry["version"] == "0.1.0" and entry["registered"]["scorers"] == ["keywords"]
    assert "keywords" in cli("ls", "scorers", cwd=tmp_path).stdout


# ----------------------------------------------------------------------------- inside training
def test_scorer_runs_inside_the_training_loop(alignkit_run, alignkit_data, tmp_path):
    """Any method can be given scorer=keywords; the loop scores every batch (here offline SFT rows,
    decoded from their labels: SFT itself ignores rewards, online methods train on them)."""
    result = alignkit_run("method=sft", "scorer=keywords", "scorer.include=[It]", *alignkit_data("tokens"),
                          "trainer.max_steps=1", "trainer.batch_size=2")
    assert result.steps == 1


@pytest.mark.skipif(not registered("methods", "reinforce"), reason="method=reinforce is not registered (issue #5)")
def test_reinforce_trains_on_keyword_rewards(tmp_path):
    # Length shaping makes rewards differ between samples even for a random tiny model's text, so the
    # policy gradient is not zero.
    report = check_method("reinforce", "scorer=keywords", "scorer.include=[It]", "scorer.target_words=3",
                          "scorer.length_weight=1.0", tmp_path=tmp_path)
    assert report["kind"] == "prompts" and "resumes" in report["checks"]
    assert report["notes"] == [], report["notes"]


@pytest.mark.skipif(not registered("methods", "reinforce"), reason="method=reinforce is not registered (issue #5)")
def test_cli_reinforce_with_scorer_keywords(tmp_path, alignkit_data):
    result = cli("train", "method=reinforce", "scorer=keywords", "scorer.include=[It]", "model=tiny",
                 *alignkit_data("prompts"), "data.eval_fraction=0", "rollout.num_samples=2",
                 "rollout.max_new_tokens=8", "trainer.max_steps=1", "trainer.batch_size=2", "trainer.progress=false",
                 "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 1
