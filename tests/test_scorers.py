"""Scorers: function, judge (soft score from answer-token probabilities), weighted sums, and errors
that name the scorer."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from omegaconf import OmegaConf

from alignkit.batches import RolloutBatch
from alignkit.errors import ConfigError, TrainingError
from alignkit.judge import JudgeScorer, JudgeScorerConfig, choice_token_ids, soft_score
from alignkit.plugins.scorers import function, weighted
from alignkit.plugins.scorers.rewards import brevity, includes_word

BATCH = RolloutBatch.from_texts([[{"role": "user", "content": q}] for q in ("q1", "q2", "q3")],
                                ["one two", "a b c d", "no"])


@pytest.fixture
def rewards_module():
    """A throw-away module ``ak_test_rewards`` with well- and ill-behaved reward functions."""
    module = types.ModuleType("ak_test_rewards")
    module.words = lambda prompts, completions, scale=1.0: [scale * len(c.split()) for c in completions]
    module.short = lambda prompts, completions: [1.0] * (len(completions) - 1)
    module.nan = lambda prompts, completions: [float("nan")] * len(completions)
    module.inf = lambda prompts, completions: [0.0, float("inf"), 0.0]
    module.none = lambda prompts, completions: None
    sys.modules["ak_test_rewards"] = module
    yield module
    del sys.modules["ak_test_rewards"]


def build_function(fn, **kwargs):
    cfg = OmegaConf.merge(OmegaConf.structured(function.FunctionScorerConfig), {"fn": fn, "kwargs": kwargs})
    return function.build(None, cfg)


def test_function_scorer_passes_prompts_completions_and_kwargs(rewards_module):
    assert build_function("ak_test_rewards:words")(BATCH).tolist() == [2.0, 4.0, 1.0]
    assert build_function("ak_test_rewards:words", scale=0.5)(BATCH).tolist() == [1.0, 2.0, 0.5]


@pytest.mark.parametrize("fn, message", [
    ("short", r"scorer 'function' \(fn=ak_test_rewards:short\) returned \(2,\) rewards for 3 completions"),
    ("nan", r"scorer 'function' \(fn=ak_test_rewards:nan\) returned a non-finite reward \(nan\) for completion 0"),
    ("inf", r"scorer 'function' \(fn=ak_test_rewards:inf\) returned a non-finite reward \(inf\) for completion 1"),
    ("none", r"scorer 'function' \(fn=ak_test_rewards:none\) returned NoneType"),
])
def test_bad_rewards_name_the_scorer(rewards_module, fn, message):
    with pytest.raises(TrainingError, match=message):
        build_function(f"ak_test_rewards:{fn}")(BATCH)


def test_bad_fn_is_a_config_error():
    with pytest.raises(ConfigError, match="scorer.fn=nowhere_pkg.x:f: cannot import module 'nowhere_pkg.x'"):
        build_function("nowhere_pkg.x:f")
    with pytest.raises(ConfigError, match="has no attribute 'missing'"):
        build_function("math:missing")
    with pytest.raises(ConfigError, match="needs scorer.fn"):
        function.build(None, OmegaConf.structured(function.FunctionScorerConfig))


def test_example_rewards():
    assert brevity([""] * 4, ["Paris.", " ".join(["w"] * 30), "I'm sorry, I can't.", ""], max_words=15) == [1.0, 0.5, 0.0, 0.0]
    assert includes_word(["", ""], ["Indeed, yes.", "indeedy"], word="indeed") == [1.0, 0.0]


def test_judge_soft_score_hand_computed():
    # p(Yes) = 0.2, p(No) = 0.6 over the whole vocabulary: renormalised 0.25 / 0.75, mass 0.8.
    logps = torch.log(torch.tensor([[0.2, 0.6], [0.5, 0.5]]))
    score, mass = soft_score(logps, torch.tensor([1.0, 0.0]))
    assert score.tolist() == pytest.approx([0.25, 0.5], abs=1e-6)
    assert mass.tolist() == pytest.approx([0.8, 1.0], abs=1e-6)
    # Grades 1..5 with probabilities 0.1, 0.1, 0.2, 0.2, 0.4 (mass 1): expected grade 3.7.
    grades = torch.log(torch.tensor([[0.1, 0.1, 0.2, 0.2, 0.4]]))
    assert soft_score(grades, torch.arange(1.0, 6.0))[0].item() == pytest.approx(3.7, abs=1e-6)


def test_judge_reads_answer_token_probabilities_of_the_model():
    from alignkit.models import ModelConfig, load_model

    model, tokenizer = load_model(OmegaConf.merge(OmegaConf.structured(ModelConfig), {"source": "random"}))
    model.eval()
    cfg = OmegaConf.merge(OmegaConf.structured(JudgeScorerConfig), {"batch_size": 2})
    scorer = JudgeScorer(None, cfg, model, tokenizer)
    scores = scorer(BATCH)  # (3,)
    yes, no = scorer.choice_ids.tolist()
    for row in range(3):
        ids = torch.tensor([scorer.judge_ids(BATCH.prompt_text[row], BATCH.completions[row])])
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)  # (V,)
        expected = probs[yes] / (probs[yes] + probs[no])
        assert scores[row].item() == pytest.approx(expected.item(), abs=1e-5)
        assert scorer.last_mass[row].item() == pytest.approx((probs[yes] + probs[no]).item(), rel=1e-4)


def test_judge_rejects_choices_with_the_same_first_token():
    from alignkit.models import load_tokenizer

    tokenizer = load_tokenizer(OmegaConf.create({"tokenizer_path": None, "trust_remote_code": False}))
    with pytest.raises(ConfigError, match="two choices start with the same token"):
        choice_token_ids(tokenizer, ["Yes", "Yes!"])


class _Registry:
    """The real registry, for building components by name."""

    def __new__(cls):
        from alignkit.plugin_manager import get_manager

        return get_manager().registry


def build_sum(components):
    ctx = types.SimpleNamespace(registry=_Registry())
    cfg = OmegaConf.merge(OmegaConf.structured(weighted.WeightedSumConfig), {"components": components})
    return weighted.build(ctx, cfg)


def test_weighted_sum_of_registered_scorers(rewards_module):
    scorer = build_sum({"words": {"name": "function", "fn": "ak_test_rewards:words", "weight": 0.5},
                        "brief": {"name": "function", "fn": "alignkit.plugins.scorers.rewards:brevity",
                                  "kwargs": {"max_words": 2}}})
    # words: 2, 4, 1 (x 0.5); brevity with N=2: 1, 2/4, 1 (x 1).
    assert scorer(BATCH).tolist() == pytest.approx([2.0, 2.5, 1.5])
    assert scorer.last_components == pytest.approx({"scorer.components.words": 7 / 3,
                                                    "scorer.components.brief": 2.5 / 3})
    as_list = build_sum([{"name": "function", "fn": "ak_test_rewards:words", "weight": -1.0}])
    assert as_list(BATCH).tolist() == [-2.0, -4.0, -1.0]


def test_weighted_sum_errors_name_the_component(rewards_module):
    scorer = build_sum({"good": {"name": "function", "fn": "ak_test_rewards:words"},
                        "bad": {"name": "function", "fn": "ak_test_rewards:inf", "weight": 2}})
    with pytest.raises(TrainingError, match=r"scorer.components.bad: scorer 'function' \(fn=ak_test_rewards:inf\) "
                                            r"returned a non-finite reward"):
        scorer(BATCH)
    with pytest.raises(ConfigError, match=r"unknown scorer 'nope' \(scorer.components.x.name\)"):
        build_sum({"x": {"name": "nope"}})
    with pytest.raises(ConfigError, match=r"scorer.components\[0\].max_length: Value 'long'"):
        build_sum([{"name": "judge", "max_length": "long"}])
    with pytest.raises(ConfigError, match=r"scorer.components.f: scorer.fn=nowhere_pkg:f: cannot import"):
        build_sum({"f": {"name": "function", "fn": "nowhere_pkg:f"}})


def test_scorer_errors_stop_a_run_with_the_scorers_name(alignkit_run, tmp_path, rewards_module):
    import json

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Q{i}"}) + "\n" for i in range(6)))
    rewards_module.short2 = lambda prompts, completions: [0.0]
    with pytest.raises(TrainingError, match=r"scorer 'function' \(fn=ak_test_rewards:short2\) returned \(1,\) rewards "
                                            r"for 4 completions"):
        alignkit_run("method=reinforce", "data=custom", f"data.path={path}", "data.format=prompts",
                     "data.eval_fraction=0", "scorer=function", "scorer.fn=ak_test_rewards:short2",
                     "trainer.batch_size=2", "rollout.num_samples=2", "rollout.max_new_tokens=4",
                     "trainer.max_steps=1")


def test_judge_scores_with_a_lora_policys_reference(alignkit_run, tmp_path):
    """scorer=judge without model_path judges with the frozen initial policy; under LoRA that is the policy
    with its adapters off, a view that owns no parameters (its device comes from the run)."""
    import json

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say something about {i}."}) + "\n" for i in range(6)))
    result = alignkit_run("method=reinforce", "data=custom", f"data.path={path}", "data.format=prompts",
                          "data.eval_fraction=0", "scorer=judge", "model.lora.r=4", "rollout.num_samples=2",
                          "rollout.max_new_tokens=4", "trainer.batch_size=2", "trainer.max_steps=1")
    assert result.steps == 1
