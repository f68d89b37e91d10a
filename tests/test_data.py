"""Data: file readers with locations, the built-in formats, HH-RLHF parsing, encoding, collation."""

from __future__ import annotations

import gzip
import json

import pytest
from omegaconf import OmegaConf

from alignkit.data import COLLATORS, DataConfig, load_records, make_encoder, split_records
from alignkit.datafiles import read_rows
from alignkit.errors import DataError, UnknownNameError
from alignkit.models import BUNDLED_TOKENIZER
from alignkit.plugin_manager import get_registry
from alignkit.plugins.formats.parsers import hh_turns, parse_hh_rlhf
from conftest import write_jsonl


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER))


def data_cfg(**overrides):
    return OmegaConf.merge(OmegaConf.structured(DataConfig), overrides)


def test_hh_transcript_splits_into_shared_prompt_and_last_replies():
    row = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Help me?\n\nAssistant: Sure.",
           "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Help me?\n\nAssistant: No."}
    record = parse_hh_rlhf(row)
    assert record["prompt"] == [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                                {"role": "user", "content": "Help me?"}]
    assert record["chosen"] == [{"role": "assistant", "content": "Sure."}]
    assert record["rejected"] == [{"role": "assistant", "content": "No."}]


def test_hh_parser_rejects_mismatched_prefixes_and_empty_replies():
    with pytest.raises(ValueError, match="differ before"):
        parse_hh_rlhf({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: x\n\nAssistant: b"})
    with pytest.raises(ValueError, match="empty completion"):
        parse_hh_rlhf({"chosen": "\n\nHuman: a\n\nAssistant:", "rejected": "\n\nHuman: a\n\nAssistant: b"})
    with pytest.raises(ValueError, match="does not start"):
        hh_turns("Hello\n\nHuman: a")


def test_bundled_data_parses_completely():
    cfg = data_cfg(path=None, format="hh_rlhf")
    registry = get_registry()
    from alignkit.data import asset_path

    train = load_records(cfg, "pairs", registry, path=asset_path("data/hh_harmless/train.jsonl.gz"))
    held_out = load_records(cfg, "pairs", registry, path=asset_path("data/hh_harmless/heldout.jsonl.gz"))
    assert (len(train), len(held_out)) == (2047, 256)
    prompts = {json.dumps(r["prompt"]) for r in train}
    assert not any(json.dumps(r["prompt"]) in prompts and r["chosen"] == t["chosen"]
                   for r in held_out[:20] for t in train[:1])


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n', r"bad.jsonl:2: malformed JSON line"),
    ('{"prompt": "a", "chosen": "b"}\n', r"bad.jsonl:1: missing field\(s\) \['rejected'\]"),
    ('{"prompt": 3, "chosen": "b", "rejected": "c"}\n', r"bad.jsonl:1: field 'prompt' must be a string or a list"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"}\n', r"bad.jsonl:1: field 'margin' must be a number"),
    ('[1, 2]\n', r"bad.jsonl:1: expected a JSON object"),
    ('{"prompt": "a", "chosen": "  ", "rejected": "c"}\n', r"bad.jsonl:1: empty completion in field 'chosen'"),
    ('\n\n', r"the dataset is empty"),
])
def test_bad_rows_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_records(data_cfg(format="pairwise"), "pairs", get_registry(), path=str(path))


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"prompt": "ok", "chosen": "b", "rejected": "c"}\n{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl:2: not valid UTF-8"):
        load_records(data_cfg(format="pairwise"), "pairs", get_registry(), path=str(path))


def test_missing_file_and_wrong_kind(tmp_path, sft_file):
    with pytest.raises(DataError, match=r"data.path=.*nope.jsonl: no such file"):
        load_records(data_cfg(), "pairs", get_registry(), path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="gives 'tokens' records but this method needs 'pairs'"):
        load_records(data_cfg(format="prompt_completion"), "pairs", get_registry(), path=str(sft_file))
    with pytest.raises(UnknownNameError, match=r"unknown data format 'nope' \(data.format\); available: chat, "):
        load_records(data_cfg(format="nope"), "pairs", get_registry(), path=str(sft_file))


def test_json_parquet_and_save_to_disk_read_the_same_rows(tmp_path):
    import datasets

    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "folder"))
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("d.json", "d.parquet", "folder", "d.jsonl.gz"):
        assert [row for _, row in read_rows(tmp_path / name)] == rows, name
    locations = [where for where, _ in read_rows(tmp_path / "d.parquet")]
    assert locations[3].endswith("d.parquet row 3")


def test_ranked_rows_sort_by_score_and_check_lengths(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "completions": ["worst", "best", "mid"], "scores": [0, 2, 1]}])
    [record] = load_records(data_cfg(format="ranked"), "ranked", get_registry(), path=str(path))
    assert [c[0]["content"] for c in record["completions"]] == ["best", "mid", "worst"]
    write_jsonl(path, [{"prompt": "p", "completions": ["a", "b"], "scores": [1]}])
    with pytest.raises(DataError, match=r"r.jsonl:1: field 'scores' has 1 entries for 2 completions"):
        load_records(data_cfg(format="ranked"), "ranked", get_registry(), path=str(path))


def test_encoder_masks_the_prompt_exactly(tokenizer):
    encoder = make_encoder(data_cfg(max_length=128, max_prompt_length=64), tokenizer)
    prompt = [{"role": "user", "content": "What is 2+2?"}]
    example = encoder.encode(prompt, [{"role": "assistant", "content": "4"}])
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    n_prompt = len(head)
    assert example["input_ids"][:n_prompt] == list(head)
    assert example["labels"][:n_prompt] == [-100] * n_prompt
    completion = example["labels"][n_prompt:]
    # The answer, then <|im_end|> and the newline the ChatML template puts after it.
    assert tokenizer.decode(completion) == "4<|im_end|>\n"
    assert completion == example["input_ids"][n_prompt:]


def test_encoder_truncates_long_prompts_from_the_left_or_fails(tokenizer):
    long_prompt = [{"role": "user", "content": "word " * 200}]
    encoder = make_encoder(data_cfg(max_length=64, max_prompt_length=32), tokenizer)
    example = encoder.encode(long_prompt, [{"role": "assistant", "content": "ok"}], "f.jsonl:7")
    assert encoder.stats.prompts_truncated == 1 and example["labels"].count(-100) == 32
    strict = make_encoder(data_cfg(max_length=64, max_prompt_length=32, truncation="fail"), tokenizer)
    with pytest.raises(DataError, match=r"f.jsonl:7: prompt has \d+ tokens > data.max_prompt_length=32"):
        strict.encode(long_prompt, [{"role": "assistant", "content": "ok"}], "f.jsonl:7")


def test_tokenizer_without_chat_template_is_a_clear_error(tokenizer):
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(DataError, match="no chat template; set data.chat_template=false"):
        make_encoder(data_cfg(), bare)
    plain = make_encoder(data_cfg(chat_template=False), bare)
    example = plain.encode([{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "yo"}])
    assert example["input_ids"][-1] == tokenizer.eos_token_id


def test_pairs_collate_chosen_then_rejected(tokenizer):
    examples = [{"chosen_input_ids": [1, 2, 3], "chosen_labels": [-100, 2, 3],
                 "rejected_input_ids": [1, 2], "rejected_labels": [-100, 2], "margin": 0.0, "label": 1.0}]
    batch = COLLATORS["pairs"](examples, 0)
    assert batch.input_ids.tolist() == [[1, 2, 3], [1, 2, 0]]
    assert batch.labels.tolist() == [[-100, 2, 3], [-100, 2, -100]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch.num_pairs == 1


def test_eval_fraction_split_is_seeded_and_disjoint(pairs_file):
    cfg = data_cfg(path=str(pairs_file), eval_fraction=0.25, format="pairwise")
    train, held = split_records(cfg, get_registry(), "pairs", seed=3)
    again_train, again_held = split_records(cfg, get_registry(), "pairs", seed=3)
    assert [r["_where"] for r in held] == [r["_where"] for r in again_held]
    assert len(held) == 6 and len(train) == 18
    assert not {r["_where"] for r in held} & {r["_where"] for r in train}
