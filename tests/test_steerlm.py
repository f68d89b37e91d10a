"""SteerLM: the attribute string, labelling math, the data format, and a tiny-model run of every stage
(attribute model -> annotate -> label -> attribute-conditioned SFT -> chat --attributes -> measure)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from alignkit.errors import ConfigError, DataError
from alignkit.plugins.formats.parsers import parse_scored
from alignkit.plugins.steerlm.attributes import (
    AttributeSchema,
    condition_prompt,
    format_attribute_string,
    parse_attribute_string,
)
from alignkit.plugins.steerlm.commands import repeated_ngrams
from alignkit.plugins.steerlm.data_format import parse_steerlm
from alignkit.plugins.steerlm.labels import level_of, quantile_levels, quantile_thresholds, word_count
from conftest import write_jsonl

SCHEMA = AttributeSchema()


# ----------------------------------------------------------------------------- attribute string
@pytest.mark.parametrize("values", [
    {"helpfulness": 4, "correctness": 3, "coherence": 4, "complexity": 1, "verbosity": 0},
    {"verbosity": 0},
    {"verbosity": 2, "helpfulness": 4},
    {},
])
def test_attribute_string_round_trip(values):
    text = format_attribute_string(values, SCHEMA)
    assert parse_attribute_string(text, SCHEMA) == values
    assert parse_attribute_string("Attributes: " + text, SCHEMA) == values


def test_attribute_string_is_in_schema_order_and_takes_both_spellings():
    assert format_attribute_string({"verbosity": 0, "helpfulness": 4}, SCHEMA) == "helpfulness:4,verbosity:0"
    parsed = parse_attribute_string(" verbosity=0, helpfulness = 4 ", SCHEMA)
    assert list(parsed.items()) == [("helpfulness", 4), ("verbosity", 0)]
    assert parse_attribute_string("verbosity:4.0", SCHEMA) == {"verbosity": 4}


@pytest.mark.parametrize("text, message", [
    ("humour:2", "unknown attribute 'humour'"),
    ("verbosity:5", r"outside \[0, 4\]"),
    ("verbosity:-1", r"outside \[0, 4\]"),
    ("verbosity:1.5", "must be an integer"),
    ("verbosity:high", "not a number"),
    ("verbosity", "not name:value"),
    ("verbosity:1,verbosity:2", "given twice"),
])
def test_attribute_string_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_attribute_string(text, SCHEMA)


def test_schema_checks_and_quantize():
    with pytest.raises(ValueError, match="duplicate"):
        AttributeSchema(names=("a", "a"))
    with pytest.raises(ValueError, match="empty"):
        AttributeSchema(min_value=3, max_value=3)
    with pytest.raises(ValueError, match="placement"):
        AttributeSchema(placement="middle")
    assert [SCHEMA.quantize(v) for v in (-1.0, 0.49, 0.5, 2.5, 3.49, 7.2)] == [0, 0, 1, 3, 3, 4]
    wide = AttributeSchema(names=("x",), min_value=1, max_value=9, defaults={"x": 5, "other": 1})
    assert wide.with_defaults({}) == {"x": 5} and wide.with_defaults({"x": 2}) == {"x": 2}


def test_condition_prompt_placements():
    prompt = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    values = {"verbosity": 0, "helpfulness": 4}
    assert condition_prompt(prompt, values, SCHEMA) == [*prompt, {"role": "system",
                                                                  "content": "Attributes: helpfulness:4,verbosity:0"}]
    start = dataclasses.replace(SCHEMA, placement="start")
    assert condition_prompt(prompt, values, start)[0] == {"role": "system",
                                                         "content": "Attributes: helpfulness:4,verbosity:0\nBe kind."}
    assert condition_prompt(prompt[1:], values, start)[0]["content"] == "Attributes: helpfulness:4,verbosity:0"
    user = dataclasses.replace(SCHEMA, placement="user")
    assert condition_prompt(prompt, values, user)[1] == {"role": "user",
                                                        "content": "Hi\n\nAttributes: helpfulness:4,verbosity:0"}
    assert prompt[1]["content"] == "Hi"  # the input is not modified
    assert condition_prompt(prompt, {}, SCHEMA) == prompt


# ----------------------------------------------------------------------------- labelling math
def test_quantile_levels_hand_computed():
    values = [float(v) for v in range(1, 11)]
    # Quintiles of 1..10 by linear interpolation: positions 1.8, 3.6, 5.4, 7.2 -> 2.8, 4.6, 6.4, 8.2.
    assert quantile_thresholds(values, 5) == pytest.approx([2.8, 4.6, 6.4, 8.2], abs=1e-9)
    levels, thresholds = quantile_levels(values, SCHEMA)
    assert levels == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    # Given thresholds are used as they are; a value equal to a threshold stays below it.
    assert quantile_levels([9.0, 9.5, 50.0], SCHEMA, [9, 16, 27, 47])[0] == [0, 1, 4]
    assert level_of(3.0, [1.0, 2.0], min_value=1) == 3
    with pytest.raises(ValueError, match="needs 4"):
        quantile_levels(values, SCHEMA, [1.0, 2.0])
    with pytest.raises(ValueError, match="ascending"):
        quantile_levels(values, SCHEMA, [4.0, 3.0, 2.0, 1.0])
    assert word_count({"completion": [{"role": "assistant", "content": "one two\nthree "}]}) == 3.0


# ----------------------------------------------------------------------------- data format
def test_steerlm_format_rows():
    record = parse_steerlm({"prompt": "Hi", "completion": "Hello", "attributes": {"verbosity": 1, "helpfulness": None}})
    assert record == {"prompt": [{"role": "user", "content": "Hi"}],
                      "completion": [{"role": "assistant", "content": "Hello"}], "attributes": {"verbosity": 1}}
    chat = parse_steerlm({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
                          "attributes": {"verbosity": 4.0}})
    assert chat["attributes"] == {"verbosity": 4} and chat["completion"][0]["content"] == "Yo"
    for row, message in [({"prompt": "Hi", "completion": "x", "attributes": {"verbosity": 1.5}}, "integer"),
                         ({"prompt": "Hi", "completion": "x", "attributes": [1]}, "object"),
                         ({"prompt": "Hi", "completion": " ", "attributes": {}}, "empty completion"),
                         ({"prompt": "Hi", "attributes": {}}, "need 'prompt' and 'completion'")]:
        with pytest.raises(ValueError, match=message):
            parse_steerlm(row)


# ----------------------------------------------------------------------------- every stage on the tiny model
SMALL = ("data.max_length=64", "data.max_prompt_length=48", "trainer.batch_size=4", "trainer.eval_batch_size=8",
         "trainer.max_steps=2", "data.eval_fraction=0.25")


def _steerlm(argv):
    from alignkit.plugins.steerlm.commands import main

    return main([str(a) for a in argv])


def test_pipeline_on_the_tiny_model(alignkit_run, tmp_path, capsys):
    # 1. Attribute-prediction model: reward_model with one head output per attribute, MSE on scores.
    scored = [{"prompt": f"Tell me about {i}.", "completion": " ".join(["word"] * (1 + i)),
               "scores": {"helpfulness": i % 5, "verbosity": min(4, i // 3)}} for i in range(16)]
    scored_path = write_jsonl(tmp_path / "scored.jsonl", scored)
    predictor = alignkit_run("method=reward_model", "loss=mse", "method.attributes=[helpfulness,verbosity]",
                             "data=custom", f"data.path={scored_path}", "data.format=scored", *SMALL,
                             run_dir=tmp_path / "predictor")
    assert json.loads((predictor.final_model / "reward_model.json").read_text())["attributes"] == ["helpfulness", "verbosity"]

    # 2. Annotate: predicted scores, rounded and clipped to 0..4, become each row's attributes.
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": r["prompt"], "completion": r["completion"]} for r in scored])
    annotated = tmp_path / "annotated.jsonl"
    assert _steerlm(["annotate", "--predictor", tmp_path / "predictor", "--data", plain, "--out", annotated]) == 0
    rows = [json.loads(line) for line in annotated.read_text().splitlines()]
    assert len(rows) == 16 and set(rows[0]) == {"prompt", "completion", "attributes", "scores"}
    for row in rows:
        assert list(row["attributes"]) == ["helpfulness", "verbosity"]
        assert all(row["attributes"][k] == AttributeSchema().quantize(v) for k, v in row["scores"].items())

    # 3. Label verbosity from length (quintiles of word counts 1..16), keeping the predicted helpfulness.
    labelled = tmp_path / "labelled.jsonl"
    capsys.readouterr()
    assert _steerlm(["label", "--data", annotated, "--format", "steerlm", "--attribute", "verbosity",
                     "--from-length", "--out", labelled]) == 0
    report = json.loads(capsys.readouterr().out)
    # Word counts 1..16: quintile positions 0.2·15 = 3, 6, 9, 12 -> thresholds 4, 7, 10, 13.
    assert report["thresholds"] == pytest.approx([4.0, 7.0, 10.0, 13.0])
    assert report["counts"] == {"0": 4, "1": 3, "2": 3, "3": 3, "4": 3}
    rows = [json.loads(line) for line in labelled.read_text().splitlines()]
    assert [r["attributes"]["verbosity"] for r in rows] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert [r["attributes"]["helpfulness"] for r in rows] == [r["attributes"]["helpfulness"] for r in
                                                             map(json.loads, annotated.read_text().splitlines())]

    # 4. Attribute-conditioned SFT.
    steer = alignkit_run("method=steerlm", "method.attributes=[helpfulness,verbosity]", "data=custom",
                         f"data.path={labelled}", "data.format=steerlm", *SMALL, run_dir=tmp_path / "steer")
    assert steer.eval_after["examples"] == 4 and torch.isfinite(torch.tensor(steer.eval_after["nll"]))

    # 5. Chat steers with --attributes (validated against the run's schema before the model loads).
    from alignkit.chat import main as chat_main

    capsys.readouterr()
    assert chat_main(["--model", str(tmp_path / "steer"), "--prompt", "Hi", "--attributes", "verbosity=0,helpfulness=4",
                      "--max-new-tokens", "3"]) == 0
    assert isinstance(capsys.readouterr().out, str)
    with pytest.raises(ConfigError, match="outside"):
        chat_main(["--model", str(tmp_path / "steer"), "--prompt", "Hi", "--attributes", "verbosity=9"])
    with pytest.raises(ConfigError, match="does not condition prompts"):
        chat_main(["--model", str(tmp_path / "predictor"), "--prompt", "Hi", "--attributes", "verbosity=0"])

    # 6. Measure: answer lengths at verbosity 0 and 4 on held-out prompts, with intervals.
    out = tmp_path / "measure.json"
    assert _steerlm(["measure", "--model", tmp_path / "steer", "--data", plain, "--limit", 4, "--values", "0,4",
                     "--max-new-tokens", 4, "--batch-size", 3, "--baseline", "tiny", "--baseline-conditioned",
                     "--repetition-penalty", 1.3, "--out", out]) == 0
    result = json.loads(out.read_text())
    assert result["decoding"] == "greedy, repetition penalty 1.3"
    with pytest.raises(ConfigError, match="--repetition-penalty 0.0: must be > 0"):
        _steerlm(["measure", "--model", tmp_path / "steer", "--data", plain, "--limit", 4, "--repetition-penalty", 0])
    assert set(result["conditions"]) == {"verbosity=0", "verbosity=4", "baseline:tiny", "baseline:tiny:verbosity=0",
                                         "baseline:tiny:verbosity=4"} and result["prompts"] == 4
    for summary in [*result["conditions"].values(), result["paired_difference"], result["baseline_paired_difference"]]:
        assert summary["n"] == 4 and summary["words_ci_low"] <= summary["words"] <= summary["words_ci_high"]
    assert all(0 <= c["tokens"] <= 4 for c in result["conditions"].values())
    for name, c in result["conditions"].items():  # every answer is kept; the checks are computed from them
        answers = result["samples"][name]
        assert len(answers) == 4 and 0.0 <= c["at_token_limit"] <= 1.0
        assert c["repeated_4grams"] == pytest.approx(sum(map(repeated_ngrams, answers)) / 4, abs=1e-6)
    printed = capsys.readouterr().out
    assert "| verbosity=4 minus verbosity=0 (paired) |" in printed and f"results and every answer: {out}" in printed


def test_repeated_ngrams_hand_computed():
    assert repeated_ngrams("a b c") == 0.0  # fewer than 4 words: no 4-gram
    assert repeated_ngrams("one two three four five") == 0.0
    # 10 words, 7 4-grams: "a b c d", "b c d a", "c d a b" twice each, "d a b c" once: 4 distinct -> 1 - 4/7
    assert repeated_ngrams("a b c d a b c d a b") == pytest.approx(3 / 7)


def test_conditioning_errors_name_the_row(alignkit_run, tmp_path):
    rows = [{"prompt": f"Q{i}", "completion": f"A{i}", "attributes": {"verbosity": 7 if i == 5 else 1}} for i in range(8)]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=r"bad.jsonl:6: attribute verbosity=7 is outside \[0, 4\]"):
        alignkit_run("method=steerlm", "data=custom", f"data.path={path}", "data.format=steerlm", *SMALL,
                     run_dir=tmp_path / "bad")


def test_label_by_function_and_errors(tmp_path, capsys):
    rows = [{"prompt": f"Q{i}", "completion": "x" * i} for i in range(1, 7)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "out.jsonl"
    # A user function with rounding: the value itself, clipped to the range.
    assert _steerlm(["label", "--data", path, "--attribute", "complexity", "--out", out,
                     "--function", "alignkit.plugins.steerlm.labels:char_count"]) == 0
    assert [json.loads(r)["attributes"]["complexity"] for r in out.read_text().splitlines()] == [1, 2, 3, 4, 4, 4]
    # the level is also the regression target: the same file is data.format=scored for the predictor
    assert [parse_scored(json.loads(r))["scores"] for r in out.read_text().splitlines()][:2] == \
        [{"complexity": 1.0}, {"complexity": 2.0}]
    with pytest.raises(ConfigError, match="exactly one"):
        _steerlm(["label", "--data", path, "--attribute", "x", "--out", out])
    with pytest.raises(ConfigError, match="--function=json:nope: module 'json' has no attribute 'nope'"):
        _steerlm(["label", "--data", path, "--attribute", "x", "--out", out, "--function", "json:nope"])
    with pytest.raises(DataError, match="missing field"):
        _steerlm(["label", "--data", path, "--format", "steerlm", "--attribute", "x", "--from-length", "--out", out])
