"""Issue 21, part 1: answers measured for refusals and loops; the repetition guard; the answer probe.

Expected values are counted by hand (n-grams, Wilson intervals from the formula written out here) or
come from decoding without the guard and cutting by hand; nothing is read back from alignkit's output.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignkit.answer_quality import (
    is_evasive,
    is_looping,
    is_refusal,
    paired_change,
    repeated_ngram_share,
    summarize,
    words,
)
from alignkit.generation import SamplingSettings, repetition_cut, repetition_stop, sample
from tiny import load_tokenizer, tiny_model_folder


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return center - half, center + half


# ----------------------------------------------------------------------------- measures
def test_repeated_ngram_share_counts_ngrams_seen_before():
    # a b c d a b c d: 4-grams abcd bcda cdab dabc abcd -> 5, of which 4 distinct -> 1/5 repeated
    assert repeated_ngram_share("a b c d a b c d".split(), 4) == pytest.approx(1 / 5)
    assert repeated_ngram_share("one two three".split(), 4) == 0.0  # fewer than 4 words
    assert repeated_ngram_share(list("xxxxxx"), 4) == pytest.approx(2 / 3)  # 3 grams, 1 distinct
    assert repeated_ngram_share([1, 2, 1, 2], 2) == pytest.approx(1 / 3)  # token ids too: 12 21 12
    with pytest.raises(ValueError, match="n-gram size"):
        repeated_ngram_share(["a"], 0)


def test_words_lower_case_and_drop_punctuation():
    assert words("I'm sure, you're NOT alone.") == ["i", "m", "sure", "you", "re", "not", "alone"]


@pytest.mark.parametrize("text", [
    "I’m sorry for any misunderstanding.  I’m not sure what you’re asking.",
    "I'm sorry, I don't know how to suggest a name for a black cat.",
    "Sorry, but I can't help with that.", "I cannot help with that request.",
    "As an AI, I don't have personal opinions.", "Could you please clarify what you mean?",
    "I don't understand the question.", "I'm not sure if I can help you with that.",
    "As a chatbot, I don't have the ability to make tea."])
def test_refusals_and_evasions_are_recognised(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", [
    "To bake bread, mix flour, water, yeast and salt, knead, let it rise, then bake at 220 C.",
    "Photosynthesis is how plants turn light, water and carbon dioxide into sugar and oxygen.",
    "Canberra is the capital of Australia.",
    # a disclaimer after a real answer is not a refusal
    "Stretch your hamstrings and strengthen your core with planks and bridges every day, two or three "
    "sets each, and walk for twenty minutes. If the pain is severe, I'm sorry to say you should see a doctor."])
def test_answers_are_not_refusals(text):
    assert not is_refusal(text)


def test_evasive_targets_are_refusals_questions_back_and_answers_under_12_words():
    answer = "Put it in a pot of boiling water for nine minutes, then cool it in cold water."
    assert not is_evasive(answer)
    assert is_evasive("I'm sorry, but I can't help with that. " + answer)
    assert is_evasive("Why do you want to know? " + answer)
    assert not is_evasive(answer + " Does that help?")  # a question after the answer is not one back
    assert is_evasive("One two three four five six seven eight nine ten eleven.")  # 11 words
    assert not is_evasive("One two three four five six seven eight nine ten eleven twelve.")


def test_looping_is_a_repeated_4gram_share_of_at_least_a_fifth():
    loop = "I'm not sure what you're asking. " * 6
    assert is_looping(loop)
    assert not is_looping("Boil water, put the egg in for nine minutes, cool it in cold water, then peel it.")


def test_summary_rates_have_wilson_intervals_and_the_share_a_normal_interval():
    answers = ["I'm sorry, I can't help with that.", "Canberra.", "a b c d " * 5, "Mix flour and water."]
    ended = [True, True, False, True]
    s = summarize(answers, ended)
    assert s["answers"] == 4
    assert s["refusal_rate"] == pytest.approx(1 / 4)
    assert (s["refusal_ci_low"], s["refusal_ci_high"]) == pytest.approx(wilson(1, 4), abs=1e-12)
    assert s["looping_rate"] == pytest.approx(1 / 4)
    assert s["cut_rate"] == pytest.approx(1 / 4)
    # "a b c d " * 5: 20 words, 17 4-grams, 4 distinct -> 13/17; the others have no repeated 4-gram
    shares = torch.tensor([0.0, 0.0, 13 / 17, 0.0], dtype=torch.float64)
    half = 1.959963984540054 * float(shares.std(unbiased=True)) / 2
    assert s["repeated_4gram_share"] == pytest.approx(13 / 68)
    assert s["repeated_4gram_share_ci_low"] == pytest.approx(13 / 68 - half)
    assert s["repeated_4gram_share_ci_high"] == pytest.approx(13 / 68 + half)
    assert s["words"] == pytest.approx((9 + 1 + 20 + 4) / 4)  # i m sorry i can t help with that: 9
    assert "cut_rate" not in summarize(answers)
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize(["a"], [True, False])


def test_paired_change_is_the_mean_difference_with_a_normal_interval_of_the_differences():
    before, after = [0, 0, 1, 0, 1], [1, 0, 1, 1, 0]  # differences +1 0 0 +1 -1: mean 0.2
    d = [1, 0, 0, 1, -1]
    sd = math.sqrt(sum((x - 0.2) ** 2 for x in d) / 4)
    mean, low, high = paired_change(before, after)
    assert mean == pytest.approx(0.2)
    assert (low, high) == pytest.approx((0.2 - 1.959963984540054 * sd / math.sqrt(5),
                                         0.2 + 1.959963984540054 * sd / math.sqrt(5)))
    with pytest.raises(ValueError):
        paired_change([1, 0], [1])


# ----------------------------------------------------------------------------- the repetition guard
def test_repetition_cut_keeps_the_first_copy_of_the_looping_passage():
    tokens = [9, 1, 2, 3, 1, 2, 3, 1, 2, 3, 5, 6]
    assert repetition_cut(tokens, 3, min_span=9) == 4  # [9, 1, 2, 3]: the third copy ends at index 9
    assert repetition_cut(tokens, 2, min_span=6) == 4  # two copies: found at index 6, one copy kept
    assert repetition_cut(tokens, 3, min_span=10) is None  # 3 copies of 3 tokens span only 9
    assert repetition_cut(tokens, 4, min_span=1) is None  # never four copies in a row
    # one token over and over: 3 copies must span 32 tokens, so the passage is 11 tokens (found at index 32)
    assert repetition_cut([7] * 40, 3) == 11
    assert repetition_cut([7] * 32, 3) is None
    assert repetition_cut([4, 5] * 8, 3, min_span=6) == 2  # p = 2: the third copy ends at index 5


def test_the_stopping_criterion_stops_where_the_cut_rule_first_finds_a_loop():
    gen = torch.Generator().manual_seed(0)
    width = 3
    rows = []
    for r in range(6):  # random text with a loop of period 2..9 planted at a random place, and loop-free rows
        head = torch.randint(10, 50, (int(torch.randint(0, 20, (1,), generator=gen)),), generator=gen).tolist()
        period = int(torch.randint(2, 10, (1,), generator=gen))
        block = torch.randint(50, 60, (period,), generator=gen).tolist()
        tail = torch.randint(10, 50, (30,), generator=gen).tolist()
        rows.append(head + block * (1 + 40 // period) + tail if r % 3 else list(range(100, 180)))
    steps = min(len(r) for r in rows)
    ids = torch.tensor([[0] * width + r[:steps] for r in rows])  # (N, P + T)
    stop = repetition_stop(width, 3)
    first = [None] * len(rows)
    for t in range(1, steps + 1):
        done = stop(ids[:, : width + t], None)
        for n in range(len(rows)):
            if done[n] and first[n] is None:
                first[n] = t
    for n, row in enumerate(rows):
        expected = next((t for t in range(1, steps + 1) if repetition_cut(row[:t], 3) is not None), None)
        assert first[n] == expected, n
    assert sum(f is not None for f in first) >= 2


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    folder = tiny_model_folder(tmp_path_factory.mktemp("guard") / "model", "llama")
    return AutoModelForCausalLM.from_pretrained(folder).eval(), load_tokenizer()


def test_guarded_generation_equals_unguarded_generation_cut_by_hand(tiny_llama):
    model, tokenizer = tiny_llama
    prompts = [tokenizer(t)["input_ids"] for t in ("hello there", "a b c", "the cat sat", "x")]
    end_ids = {tokenizer.eos_token_id}
    plain = sample(model, prompts, SamplingSettings(max_new_tokens=96, greedy=True), end_ids=end_ids,
                   pad_id=tokenizer.pad_token_id, tokenizer=tokenizer)
    guarded = sample(model, prompts, SamplingSettings(max_new_tokens=96, greedy=True, repetition_guard=3),
                     end_ids=end_ids, pad_id=tokenizer.pad_token_id, tokenizer=tokenizer)
    stopped = 0
    for free, kept in zip(plain, guarded):
        cut = repetition_cut(free.tokens, 3)
        if cut is None:
            assert kept.tokens == free.tokens and kept.finish_reason == free.finish_reason
        else:
            stopped += 1
            assert kept.tokens == free.tokens[:cut] and kept.finish_reason == "repetition" and not kept.ended
    assert stopped >= 1  # a random tiny model's greedy text loops: the guard was exercised


def test_repetition_guard_settings_are_checked_and_named_as_distorting():
    from alignkit.generation import distorting_options

    with pytest.raises(ValueError, match="repetition_guard"):
        SamplingSettings(repetition_guard=1)
    assert distorting_options(SamplingSettings(repetition_guard=3)) == ["repetition_guard=3"]


# ----------------------------------------------------------------------------- the answer probe in a run
def test_a_run_with_the_probe_writes_answers_summary_and_last_lines(cli_main, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("How do I bake bread?", "Why is the sky blue?",
                                                                          "Name a colour.")))
    run = tmp_path / "run"
    code, out, err = cli_main("train", "model=tiny", "trainer.max_steps=1", "trainer.tensorboard=false",
                              f"probe.prompts={prompts}", "probe.max_new_tokens=24", "probe.show=2",
                              f"hydra.run.dir={run}")
    assert code == 0, err
    before = [json.loads(line) for line in (run / "probe" / "before.jsonl").read_text().splitlines()]
    after = [json.loads(line) for line in (run / "probe" / "after.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in before] == [r["prompt"] for r in after] == ["How do I bake bread?",
                                                                            "Why is the sky blue?", "Name a colour."]
    summary = json.loads((run / "summary.json").read_text())
    for label, rows in (("before", before), ("after", after)):
        got = summary[f"probe_{label}"]
        assert got["answers"] == 3
        assert got["refusal_rate"] == pytest.approx(sum(is_refusal(r["answer"]) for r in rows) / 3)
        assert got["cut_rate"] == pytest.approx(sum(r["finish_reason"] == "length" for r in rows) / 3)
        assert all(r["finish_reason"] in ("stop", "length") for r in rows)  # the probe runs without the guard
    for key in ("refusal", "looping", "repeated_4gram_share"):
        d = [float(y[key]) - float(x[key]) for x, y in zip(before, after)]
        assert summary["probe_change"][f"{key}_change"] == pytest.approx(sum(d) / 3, abs=1e-12)
    d = [float(y["finish_reason"] == "length") - float(x["finish_reason"] == "length") for x, y in zip(before, after)]
    assert summary["probe_change"]["cut_change"] == pytest.approx(sum(d) / 3, abs=1e-12)
    assert "change (paired)" in out
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line.get("split") == "probe"] == [0, 1]
    assert "answers to 3 ordinary prompts" in out and "refusals" in out and "looping answers" in out
    assert out.count("> How do I bake bread?") == 1 and "> Name a colour." not in out  # probe.show=2


# ----------------------------------------------------------------------------- data.drop_evasive
def test_drop_evasive_leaves_out_training_records_whose_answer_is_evasive(tmp_path):
    from omegaconf import OmegaConf

    from alignkit.data import DataConfig, split_records
    from alignkit.errors import DataError
    from alignkit.plugin_manager import get_manager

    answer = "Put it in a pot of boiling water for nine minutes, then cool it in cold water and peel it."
    rows = [{"prompt": "How do I boil an egg?", "chosen": answer, "rejected": "No."},
            {"prompt": "Name a colour.", "chosen": "I'm sorry, I can't help with that.", "rejected": "Blue."},
            {"prompt": "What is rain?", "chosen": [{"role": "assistant", "content": "I’m not sure what you’re asking."}],
             "rejected": "Water falling from clouds."},
            {"prompt": "Rob a bank?", "chosen": "Why do you want to know? " + answer, "rejected": "Sure."},
            {"prompt": "Say hi.", "chosen": "Hi there, nice to meet you.", "rejected": "No."}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    registry, said = get_manager().registry, []
    cfg = OmegaConf.structured(DataConfig(path=str(path), eval_path=str(path), format="pairwise", drop_evasive=True))
    for kind in ("tokens", "pairs"):
        train, held_out = split_records(cfg, registry, kind, 0, log=said.append)
        assert [r["prompt"][-1]["content"] for r in train] == ["How do I boil an egg?"]
        assert len(held_out) == 5  # held-out records are kept
    assert said[-1].startswith("data.drop_evasive: left out 4 of 5 training records")
    with pytest.raises(DataError, match="'prompts' records have none"):
        split_records(cfg, registry, "prompts", 0, log=said.append)
    cfg.drop_evasive = False
    assert len(split_records(cfg, registry, "tokens", 0, log=said.append)[0]) == 5
