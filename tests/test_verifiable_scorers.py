"""Verifiable rewards: math (math-verify), exact_match, regex / format, the soft over-length penalty, the
weighted sum's normalise-then-sum option; a checker that fails or times out scores 0 and is counted."""

from __future__ import annotations

import time

import pytest
import torch
from omegaconf import OmegaConf

from alignkit.batches import RolloutBatch, completion_rows
from alignkit.errors import ConfigError
from alignkit.plugins.scorers import verifiable

USER = [{"role": "user", "content": "What is the answer?"}]


def batch_of(completions, answers):
    return RolloutBatch.from_texts([USER] * len(completions), completions, [{"answer": a} for a in answers])


def config(schema, **values):
    return OmegaConf.merge(OmegaConf.structured(schema), values)


def test_math_accepts_the_equal_answer_in_any_notation():
    scorer = verifiable.MathScorer(config(verifiable.MathScorerConfig))
    completions = ["So the answer is \\boxed{56}.", "7 times 8 is 56", "It is 0.5", "The result is $\\frac{1}{2}$",
                   "I think 55.", "no number here", "\\boxed{3}"]
    answers = ["56", "56", "1/2", "0.5", "56", "56", "\\frac{6}{2}"]
    assert scorer(batch_of(completions, answers)).tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    stats = scorer.pop_stats()
    assert stats["scorer/math_checked"] == 7 and stats["scorer/math_errors"] == 0 and stats["scorer/math_seconds"] > 0
    assert scorer.pop_stats()["scorer/math_checked"] == 0  # popped: counts are per step


def test_a_checker_that_raises_or_times_out_scores_zero_and_is_counted(monkeypatch):
    scorer = verifiable.MathScorer(config(verifiable.MathScorerConfig, timeout_s=0.2))

    def slow_or_broken(completion, gold):
        if completion == "slow":
            time.sleep(2)
        if completion == "broken":
            raise RuntimeError("parser crashed")
        return True

    monkeypatch.setattr(verifiable, "math_equal", slow_or_broken)
    started = time.perf_counter()
    rewards = scorer(batch_of(["slow", "broken", "fine"], ["1", "1", "1"]))
    assert rewards.tolist() == [0.0, 0.0, 1.0] and time.perf_counter() - started < 1.5
    stats = scorer.pop_stats()
    assert stats["scorer/math_timeouts"] == 1 and stats["scorer/math_errors"] == 1
    # A row without the answer column is an error of that row, not a crash.
    assert scorer(RolloutBatch.from_texts([USER], ["42"], [{}])).tolist() == [0.0]
    assert scorer.pop_stats()["scorer/math_errors"] == 1


def test_exact_match_normalises_and_extracts():
    scorer = verifiable.ExactMatchScorer(config(verifiable.ExactMatchConfig))
    assert scorer(batch_of(["  Paris. ", "paris", "Paris, France"], ["Paris"] * 3)).tolist() == [1.0, 1.0, 0.0]
    tagged = verifiable.ExactMatchScorer(config(verifiable.ExactMatchConfig, extract=r"<answer>(.*?)</answer>"))
    assert tagged(batch_of(["<answer> 12 </answer> done", "12"], ["12", "12"])).tolist() == [1.0, 0.0]
    with pytest.raises(ConfigError, match="scorer.extract"):
        verifiable.ExactMatchScorer(config(verifiable.ExactMatchConfig, extract="(unclosed"))


def test_regex_and_format():
    boxed = verifiable.RegexScorer(config(verifiable.RegexScorerConfig, name="format", pattern=r"\\boxed\{[^{}]*\}"))
    assert boxed(batch_of(["so \\boxed{4}", "so 4"], ["4", "4"])).tolist() == [1.0, 0.0]
    whole = verifiable.RegexScorer(config(verifiable.RegexScorerConfig, pattern=r"\d+", fullmatch=True, reward=0.5))
    assert whole(batch_of(["42", "42 apples"], ["", ""])).tolist() == [0.5, 0.0]


def test_overlong_penalty_by_hand():
    # L_max 10, L_cache 4: 0 up to 6 tokens, (6 − len) / 4 from 7 to 10, −1 beyond 10.
    lengths = torch.tensor([3, 6, 7, 8, 10, 11])
    expected = [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    assert verifiable.overlong_penalty(lengths, 10, 4).tolist() == pytest.approx(expected)
    rows = completion_rows([[5]] * 3, [[1] * 2, [1] * 8, [1] * 12], pad_id=0)
    batch = RolloutBatch(**rows, group=torch.arange(3), ended=torch.ones(3), completions=["a", "b", "c"], k=1)
    assert verifiable.OverlongScorer(10, 4)(batch).tolist() == pytest.approx([0.0, -0.5, -1.0])
    with pytest.raises(ConfigError, match="scorer.buffer"):
        verifiable.OverlongScorer(4, 4)


def test_weighted_sum_normalises_each_component_then_sums(alignkit_plugins):
    from alignkit.plugins.scorers.weighted import WeightedSumScorer, standardize

    alignkit_plugins()
    math_scorer = verifiable.MathScorer(config(verifiable.MathScorerConfig))
    fmt = verifiable.RegexScorer(config(verifiable.RegexScorerConfig, pattern=r"\\boxed"))
    batch = batch_of(["\\boxed{2}", "2", "\\boxed{3}", "3"], ["2", "2", "2", "2"])
    correct, boxed = torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([1.0, 0.0, 1.0, 0.0])
    plain = WeightedSumScorer([("a", "math", 1.0, math_scorer), ("b", "format", 0.5, fmt)])
    assert plain(batch).tolist() == (correct + 0.5 * boxed).tolist()
    normed = WeightedSumScorer([("a", "math", 1.0, math_scorer), ("b", "format", 0.5, fmt)], normalize=True)
    z = lambda r: (r - r.mean()) / (r.std() + 1e-6)  # noqa: E731 - written out here, not read back
    torch.testing.assert_close(normed(batch), z(correct) + 0.5 * z(boxed))
    assert standardize(torch.ones(4)).tolist() == [0.0] * 4
    stats = normed.pop_stats()
    assert stats["scorer/a_mean"] == 0.5 and stats["scorer/b_mean"] == 0.5 and stats["scorer/math_checked"] == 8


# ----------------------------------------------------------------------------- through a training run
def _problems(path, n=12):
    rows = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i), "level": i % 3} for i in range(n)]
    path.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    return path


def test_grpo_with_the_math_checker_sees_each_samples_own_answer(alignkit_run, tmp_path, monkeypatch):
    """scorer=math inside method=grpo: every one of the k samples of a prompt is checked against that
    prompt's answer (the columns follow the rows through sampling), and the checker's time is logged."""
    import re

    from alignkit.metrics import read_metrics

    seen = []
    real = verifiable.math_equal

    def recording(completion, gold):
        seen.append(gold)
        return real(completion, gold)

    monkeypatch.setattr(verifiable, "math_equal", recording)
    path = _problems(tmp_path / "problems.jsonl")
    checked_prompts = []
    original = verifiable.MathScorer.__call__

    def spy(self, batch):
        checked_prompts.extend(zip(batch.prompt_text, (row["answer"] for row in batch.columns),
                                   (row["level"] for row in batch.columns)))
        return original(self, batch)

    monkeypatch.setattr(verifiable.MathScorer, "__call__", spy)
    result = alignkit_run("method=grpo", "scorer=math", "data=custom", f"data.path={path}", "data.format=prompts",
                          "data.eval_fraction=0", "trainer.batch_size=2", "rollout.num_samples=3",
                          "rollout.max_new_tokens=4", "trainer.max_steps=2", "trainer.eval_every=0")
    assert len(checked_prompts) == 2 * 2 * 3 and len(seen) == len(checked_prompts)
    for prompt, answer, level in checked_prompts:  # each sample's columns are its own prompt's
        i = int(re.search(r"What is (\d+) \+", prompt).group(1))
        assert answer == str(2 * i) and level == i % 3
    assert seen == [answer for _, answer, _ in checked_prompts]
    rows = [r for r in read_metrics(result.run_dir) if r["split"] == "train"]
    assert len(rows) == 2 and all(r["scorer/math_seconds"] >= 0 and r["scorer/math_errors"] == 0 for r in rows)


def test_held_out_checks_are_counted_in_the_evaluation_not_in_the_next_step(alignkit_run, tmp_path):
    from alignkit.metrics import read_metrics

    path = _problems(tmp_path / "problems.jsonl")  # 12 prompts: 3 held out, 1 sample each
    result = alignkit_run("method=grpo", "scorer=math", "data=custom", f"data.path={path}", "data.format=prompts",
                          "data.eval_fraction=0.25", "trainer.batch_size=2", "rollout.num_samples=3",
                          "rollout.max_new_tokens=4", "trainer.max_steps=2", "trainer.eval_every=0")
    rows = read_metrics(result.run_dir)
    assert [r["scorer/math_checked"] for r in rows] == [3, 2 * 3, 2 * 3, 3]  # eval, step 1, step 2, eval
    assert [r["split"] for r in rows] == ["eval", "train", "train", "eval"]


def test_function_checkers_get_the_columns_as_keyword_lists():
    from alignkit.plugins.scorers.function import FunctionScorer

    got = {}

    def check(prompts, completions, answer, level, **kwargs):
        got.update(answer=answer, level=level, kwargs=kwargs)
        return [float(c == a) for c, a in zip(completions, answer)]

    batch = RolloutBatch.from_texts([USER] * 3, ["4", "5", "x"], [{"answer": "4", "level": 1}, {"answer": "5"},
                                                                   {"answer": "6", "level": 2}])
    rewards = FunctionScorer(check, {"unit": "none"}, "test")(batch)
    assert rewards.tolist() == [1.0, 1.0, 0.0]
    assert got == {"answer": ["4", "5", "6"], "level": [1, None, 2], "kwargs": {"unit": "none"}}
    with pytest.raises(ConfigError, match="clash"):
        FunctionScorer(check, {"answer": "x"}, "test")(batch)

    def short(prompts, completions, max_words=8):  # names no column: gets none (no TypeError on 'answer')
        return [float(len(c.split()) <= max_words) for c in completions]

    assert FunctionScorer(short, {}, "test")(batch).tolist() == [1.0, 1.0, 1.0]

    def only_answer(prompts, completions, answer):
        got.update(only=answer)
        return [0.0] * len(completions)

    FunctionScorer(only_answer, {}, "test")(batch)
    assert got["only"] == ["4", "5", "6"]


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_prompts_with_answers_from_csv_and_parquet_keep_their_columns(tmp_path, suffix):
    import pandas as pd

    from alignkit.data import load_records
    from alignkit.plugin_manager import get_registry

    frame = pd.DataFrame({"prompt": ["What is 2 + 2?", "What is 3 * 3?"], "answer": ["4", "9"], "source": ["a", "b"]})
    path = tmp_path / f"problems.{suffix}"
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path)
    records = load_records(OmegaConf.create({"format": "auto"}), "prompts", get_registry(), path=str(path))
    assert [r["columns"] for r in records] == [{"answer": "4", "source": "a"}, {"answer": "9", "source": "b"}]


def test_csv_cells_are_read_as_written(tmp_path):
    from alignkit.datafiles import read_rows

    path = tmp_path / "problems.csv"
    path.write_text('prompt,answer,note\n"Code?",007,\n"Half?",1.50,x\n')
    rows = [row for _, row in read_rows(str(path))]
    assert [r["answer"] for r in rows] == ["007", "1.50"] and rows[0]["note"] is None and rows[1]["note"] == "x"
