"""Users' own data as it comes from other toolkits and the Hub (issue 20): format inference, the
conversational layouts, unpaired preferences, every file type and renamed fields.

Each test writes a small file; expected records are written out by hand, expected token ids come
from the tokenizer's own ``apply_chat_template``.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from alignkit.data import COLLATORS, ENCODERS, DataConfig, infer_format, load_records, make_encoder
from alignkit.datafiles import read_rows
from alignkit.errors import DataError
from alignkit.hookspecs import hookimpl
from alignkit.interfaces import LossOutput
from alignkit.logprobs import sequence_logprobs
from alignkit.plugin_manager import get_registry
from alignkit.specs import DataFormatSpec, MethodSpec
from alignkit.testing import TINY_DEFAULTS
from conftest import write_jsonl

SYSTEM = {"role": "system", "content": "You are terse."}
TOOL_CALL = {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}]}
TOOL_RESULT = {"role": "tool", "name": "add", "content": "4"}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def data_cfg(**overrides) -> object:
    return OmegaConf.merge(OmegaConf.structured(DataConfig), overrides)


def records_of(tmp_path: Path, rows: list, kind: str, name: str = "rows.jsonl", **cfg) -> list[dict]:
    path = write_jsonl(tmp_path / name, rows)
    records = load_records(data_cfg(**cfg), kind, get_registry(), path=str(path))
    return [{k: v for k, v in r.items() if k != "_where"} for r in records]


HH = "\n\nHuman: Hi there\n\nAssistant: Hello!"
# row -> the format that reads the most of its fields
INFERRED = {
    "pairwise": {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    "hh_rlhf": {"chosen": HH, "rejected": HH.replace("Hello!", "Go away.")},
    "chat": {"messages": [user("2+2?"), assistant("4")]},
    "chat (ShareGPT)": {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    "prompt_completion": {"prompt": "2+2?", "completion": "4"},
    "scored": {"prompt": "2+2?", "completion": "4", "scores": {"verbosity": 1}},
    "steerlm": {"prompt": "2+2?", "completion": "4", "attributes": {"verbosity": 1}},
    "ranked": {"prompt": "2+2?", "completions": ["4", "5"]},
    "prompts": {"prompt": "2+2?", "answer": "4", "level": 1},
    "unpaired": {"prompt": "2+2?", "completion": "4", "label": True},
    "pairwise (whole conversations)": {"chosen": [user("2+2?"), assistant("4")],
                                       "rejected": [user("2+2?"), assistant("5")]},
}


@pytest.mark.parametrize("case", list(INFERRED))
def test_the_format_is_inferred_from_the_fields(tmp_path, case):
    path = write_jsonl(tmp_path / "rows.jsonl", [INFERRED[case]] * 3)
    assert infer_format(str(path), get_registry()).name == case.split(" ")[0]


def test_unknown_fields_are_one_line_naming_the_fields_and_the_formats(tmp_path):
    path = write_jsonl(tmp_path / "se.jsonl", [{"question": "q", "response_j": "a", "response_k": "b"}])
    with pytest.raises(DataError) as info:
        infer_format(str(path), get_registry())
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}:1: no data format reads rows with fields "
                                                      "['question', 'response_j', 'response_k']")
    assert "pairwise {chosen, rejected, [prompt, margin, label]}" in message and "data.columns={" in message


@dataclass
class _Triples:
    """A third-party format reading the same fields as ``pairwise``."""

    @hookimpl
    def register_data_formats(self, register):
        register(DataFormatSpec(name="triples", parse=lambda row: row, produces="pairs",
                                required=("prompt", "chosen", "rejected")))


def test_third_party_formats_take_part_and_a_tie_lists_the_candidates(alignkit_plugins, tmp_path):
    alignkit_plugins(("alignkit-triples", _Triples()))
    path = write_jsonl(tmp_path / "pairs.jsonl", [INFERRED["pairwise"]])
    with pytest.raises(DataError, match=r"pairs.jsonl: rows with fields \['chosen', 'prompt', 'rejected'\] fit "
                                        r"several data formats: pairwise, triples; pass data.format=<one of them>"):
        infer_format(str(path), get_registry())


def test_data_path_alone_drops_the_bundled_format_and_held_out_file(alignkit_compose):
    bundled = alignkit_compose("method=dpo")
    assert (bundled.data.format, bundled.data.name) == ("hh_rlhf", "hh_harmless")
    assert bundled.data.eval_path.endswith("hh_harmless/heldout.jsonl.gz")
    own = alignkit_compose("method=dpo", "data.path=/data/pairs.jsonl")
    assert (own.data.format, own.data.name, own.data.eval_path, own.data.eval_fraction) == \
        ("auto", "custom", None, 0.05)
    assert alignkit_compose("method=dpo", "data.path=/data/p.jsonl", "data.format=pairwise").data.format == "pairwise"
    prompts = alignkit_compose("method=reinforce", "data=brief_prompts", "data.path=/data/p.jsonl")
    assert (prompts.data.format, prompts.data.eval_path) == ("auto", None)


def test_train_with_only_data_path_infers_logs_and_saves_the_format(cli_main, pairs_file, tmp_path, monkeypatch):
    """The issue's first command: `alignkit train method=dpo model=tiny data.path=pairs.jsonl`."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    code, out, err = cli_main("train", *TINY_DEFAULTS, "method=dpo", f"data.path={pairs_file}", "trainer.max_steps=1",
                              "trainer.batch_size=2", "trainer.eval_batch_size=4", f"hydra.run.dir={run}")
    assert code == 0, err
    assert f"data: data.format=pairwise inferred from the fields of {pairs_file} (pairs records" in out
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert (saved["format"], saved["path"], saved["eval_path"], saved["eval_fraction"]) == \
        ("pairwise", str(pairs_file), None, 0.05)


# ----------------------------------------------------------------------------- conversational layouts
def test_conversational_pairs_keep_system_and_tool_messages(tmp_path):
    prompt = [SYSTEM, user("What is 2+2?")]
    rows = [
        # prompt as messages, answers as assistant messages (a tool call among them)
        {"prompt": prompt, "chosen": [TOOL_CALL, TOOL_RESULT, assistant("4")], "rejected": [assistant("5")]},
        # whole conversations, no prompt field: the shared messages are the prompt
        {"chosen": [*prompt, assistant("4")], "rejected": [*prompt, assistant("5")]},
        # UltraFeedback's layout: a prompt string and whole conversations
        {"prompt": "What is 2+2?", "chosen": [user("What is 2+2?"), assistant("4")],
         "rejected": [user("What is 2+2?"), assistant("5")]},
    ]
    records = records_of(tmp_path, rows, "pairs")
    assert records[0] == {"prompt": prompt, "chosen": [TOOL_CALL, TOOL_RESULT, assistant("4")],
                          "rejected": [assistant("5")]}
    assert records[1] == {"prompt": prompt, "chosen": [assistant("4")], "rejected": [assistant("5")]}
    assert records[2] == {"prompt": [user("What is 2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")]}


@pytest.mark.parametrize("row, message", [
    ({"chosen": [user("a"), assistant("b"), user("c"), assistant("d")],
      "rejected": [user("a"), assistant("x"), user("y"), assistant("z")]},
     r"rows.jsonl:1: fields chosen / rejected differ before their last user turn \(after message 1\)"),
    ({"chosen": [user("a"), assistant("b")], "rejected": [user("x"), assistant("y")]},
     r"rows.jsonl:1: fields chosen / rejected share no prompt"),
    ({"prompt": "other", "chosen": [user("a"), assistant("b")], "rejected": [user("a"), assistant("c")]},
     r"rows.jsonl:1: field 'prompt' is not the prompt that fields chosen / rejected hold"),
    ({"prompt": [user("a"), {"role": "user", "content": 3}], "chosen": "b", "rejected": "c"},
     r"rows.jsonl:1: field 'prompt\[1\].content' must be a string, got int \(data.format=pairwise\)"),
    ({"chosen": "b", "rejected": "c", "prompt": None},
     r"rows.jsonl:1: fields chosen / rejected hold answers only: the row needs a 'prompt' field"),
])
def test_bad_conversations_name_the_row_and_the_field(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        records_of(tmp_path, [row], "pairs", format="pairwise")


def test_chat_and_sharegpt_sft_rows_keep_system_and_tool_calls(tmp_path):
    rows = [{"messages": [SYSTEM, user("What is 2+2?"), TOOL_CALL, TOOL_RESULT, assistant("4")]},
            {"conversations": [{"from": "system", "value": "You are terse."}, {"from": "human", "value": "Hi"},
                               {"from": "gpt", "value": "Hello", "weight": 1}]}]
    records = records_of(tmp_path, rows, "tokens")
    assert records[0] == {"prompt": [SYSTEM, user("What is 2+2?"), TOOL_CALL, TOOL_RESULT],
                          "completion": [assistant("4")]}
    assert records[1] == {"prompt": [SYSTEM, user("Hi")], "completion": [{"role": "assistant", "content": "Hello",
                                                                          "weight": 1}]}
    with pytest.raises(DataError, match=r"rows.jsonl:1: field 'conversations\[0\].from' is 'bot'; expected one of"):
        records_of(tmp_path, [{"conversations": [{"from": "bot", "value": "x"}, {"from": "gpt", "value": "y"}]}],
                   "tokens")


TOOL_TEMPLATE = (  # ChatML that renders a message's name and tool calls
    "{% for m in messages %}<|im_start|>{{ m['role'] }}{% if m.get('name') %}:{{ m['name'] }}{% endif %}"
    "{{ '\\n' }}{{ m['content'] }}{% for call in m.get('tool_calls', []) %}<tool_call>{{ call['function']['name'] }}"
    "({{ call['function']['arguments'] | tojson }})</tool_call>{% endfor %}<|im_end|>{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}")


def test_the_chat_template_sees_tool_calls_and_names(tmp_path):
    from tiny import load_tokenizer

    tokenizer = load_tokenizer()
    tokenizer.chat_template = TOOL_TEMPLATE
    row = {"messages": [SYSTEM, user("What is 2+2?"), TOOL_CALL, TOOL_RESULT, assistant("4")]}
    [record] = load_records(data_cfg(), "tokens", get_registry(), path=str(write_jsonl(tmp_path / "t.jsonl", [row])))
    example = make_encoder(data_cfg(max_length=256, max_prompt_length=128), tokenizer).encode(
        record["prompt"], record["completion"])
    # Independently: the template applied to the file's own messages.
    expected = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=False)
    head = tokenizer.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, tokenize=True,
                                         return_dict=False)
    assert example["input_ids"] == list(expected)
    assert example["labels"] == [-100] * len(head) + list(expected)[len(head):]
    assert '<tool_call>add({"a": 2, "b": 2})</tool_call>' in tokenizer.decode(example["input_ids"])
    assert "<|im_start|>tool:add\n4" in tokenizer.decode(example["input_ids"])


def test_ranked_lists_as_conversations(tmp_path):
    prompt = [SYSTEM, user("Rank these")]
    rows = [{"completions": [[*prompt, assistant(a)] for a in ("best", "mid", "worst")]},
            {"prompt": prompt, "completions": [[assistant("worst")], [assistant("best")]], "scores": [0.1, 0.9]}]
    records = records_of(tmp_path, rows, "ranked")
    assert records[0] == {"prompt": prompt, "completions": [[assistant("best")], [assistant("mid")],
                                                            [assistant("worst")]]}
    assert records[1] == {"prompt": prompt, "completions": [[assistant("best")], [assistant("worst")]]}


def test_prompts_keep_their_other_fields_as_columns(tmp_path):
    from tiny import load_tokenizer

    rows = [{"prompt": "What is 6*7?", "answer": "42", "level": 3},
            {"prompt": [SYSTEM, user("Name a prime.")], "answer": None}]
    records = records_of(tmp_path, rows, "prompts")
    assert records == [{"prompt": [user("What is 6*7?")], "columns": {"answer": "42", "level": 3}},
                       {"prompt": [SYSTEM, user("Name a prime.")], "columns": {"answer": None}}]
    tokenizer = load_tokenizer()
    encoder = make_encoder(data_cfg(), tokenizer)
    example = ENCODERS["prompts"](encoder, {**records[0], "_where": "rows.jsonl:1"})
    assert example["columns"] == {"answer": "42", "level": 3}
    assert example["prompt_ids"] == list(tokenizer.apply_chat_template(
        [user("What is 6*7?")], add_generation_prompt=True, tokenize=True, return_dict=False))


# ----------------------------------------------------------------------------- unpaired preferences
UNPAIRED = [{"prompt": f"Question {i}?", "completion": f"Answer {i}.", "label": i % 3 != 0} for i in range(12)]


def test_unpaired_rows_are_a_record_kind_of_their_own(tmp_path):
    from tiny import load_tokenizer

    records = records_of(tmp_path, UNPAIRED, "unpaired")
    assert [r["label"] for r in records] == [row["label"] for row in UNPAIRED]
    assert records[1] == {"prompt": [user("Question 1?")], "completion": [assistant("Answer 1.")], "label": True}
    encoder = make_encoder(data_cfg(), load_tokenizer())
    examples = [ENCODERS["unpaired"](encoder, {**r, "_where": "x"}) for r in records[:3]]
    batch = COLLATORS["unpaired"](examples, 2)
    assert batch.desirable.tolist() == [False, True, True]
    assert batch.select([2, 0]).desirable.tolist() == [True, False]
    with pytest.raises(DataError, match=r"rows.jsonl:1: field 'label' must be true or false"):
        records_of(tmp_path, [{"prompt": "p", "completion": "c", "label": "yes"}], "unpaired", format="unpaired")
    with pytest.raises(DataError, match="gives 'unpaired' records but this method needs 'pairs'"):
        records_of(tmp_path, UNPAIRED, "pairs")


@dataclass
class _KTOConfig:
    name: str = "kto_toy"


class _KTOToy:
    """Raise the log-likelihood of desirable answers, lower that of undesirable ones (a KTO stand-in)."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx

    def weight(self, batch) -> float:
        return float(batch.num_rows)

    def __call__(self, batch) -> LossOutput:
        stats = sequence_logprobs(self.ctx.policy, batch)
        sign = batch.desirable.float() * 2 - 1  # (B,)
        return LossOutput(-(sign * stats.mean).mean(), {})


def test_a_plugin_method_can_train_on_unpaired_records(alignkit_plugins, tmp_path):
    from alignkit.testing import check_method

    conf = tmp_path / "conf" / "method"
    conf.mkdir(parents=True)
    (conf / "kto_toy.yaml").write_text("# @package _global_\ndefaults:\n  - /schema/method/kto_toy@method\n"
                                       "  - override /rollout: dataset\n  - _self_\nmethod:\n  name: kto_toy\n")

    class Plugin:
        @hookimpl
        def register_methods(self, register):
            register(MethodSpec(name="kto_toy", build=_KTOToy, consumes="unpaired", schema=_KTOConfig))

        @hookimpl
        def register_config_dirs(self):
            return f"file://{tmp_path / 'conf'}"

    alignkit_plugins(("alignkit-kto-toy", Plugin()))
    report = check_method("kto_toy", tmp_path=tmp_path, resume=False, steps=1)
    assert report["kind"] == "unpaired" and "trains" in report["checks"]


# ----------------------------------------------------------------------------- files and renamed fields
ROWS = [{"prompt": f"p{i}", "chosen": f"yes, {i}", "rejected": f"no\t{i}"} for i in range(5)]


def _write_all(tmp_path: Path) -> dict[str, Path]:
    import datasets
    import pyarrow as pa

    dataset = datasets.Dataset.from_list(ROWS)
    paths = {name: tmp_path / name for name in ("d.csv", "d.tsv", "list.json", "wrapped.json", "d.jsonl.gz",
                                                "d.parquet", "ipc.arrow")}
    dataset.to_csv(str(paths["d.csv"]), index=False)
    dataset.to_csv(str(paths["d.tsv"]), sep="\t", index=False)
    paths["list.json"].write_text(json.dumps(ROWS))
    paths["wrapped.json"].write_text(json.dumps({"data": ROWS}))
    with gzip.open(paths["d.jsonl.gz"], "wt") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in ROWS))
    dataset.to_parquet(str(paths["d.parquet"]))
    with pa.OSFile(str(paths["ipc.arrow"]), "wb") as sink, pa.ipc.new_file(sink, dataset.data.table.schema) as writer:
        writer.write_table(dataset.data.table)
    dataset.save_to_disk(str(tmp_path / "saved"))
    paths["saved"] = tmp_path / "saved"
    paths["stream.arrow"] = next((tmp_path / "saved").glob("*.arrow"))
    # A Hub-style folder: train shards and a test split, which data.path must not train on.
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    write_jsonl(hub / "train-00000-of-00002.jsonl", ROWS[:2])
    datasets.Dataset.from_list(ROWS[2:]).to_parquet(str(hub / "train-00001-of-00002.parquet"))
    write_jsonl(hub / "test-00000-of-00001.jsonl", [{"prompt": "held out", "chosen": "a", "rejected": "b"}])
    paths["hub"] = tmp_path / "hub"
    return paths


def test_every_file_type_reads_the_same_rows_and_records(tmp_path):
    for name, path in _write_all(tmp_path).items():
        assert [row for _, row in read_rows(path)] == ROWS, name
        records = load_records(data_cfg(), "pairs", get_registry(), path=str(path))
        assert [r["rejected"][0]["content"] for r in records] == [f"no\t{i}" for i in range(5)], name


def test_a_bad_csv_row_names_the_file_the_row_and_the_field(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,chosen,rejected\nhi,yes,no\nhi,,no\n")
    with pytest.raises(DataError, match=r"bad.csv row 1: field 'chosen' must be a string or a list of "
                                        r"\{role, content\} messages, got NoneType \(data.format=pairwise\)"):
        load_records(data_cfg(), "pairs", get_registry(), path=str(path))


def test_columns_rename_fields_before_inference(tmp_path):
    rows = [{"question": "q", "response_j": "good", "response_k": "bad", "id": 7}]
    renamed = {"question": "prompt", "response_j": "chosen", "response_k": "rejected"}
    assert records_of(tmp_path, rows, "pairs", columns=renamed) == [
        {"prompt": [user("q")], "chosen": [assistant("good")], "rejected": [assistant("bad")]}]
    with pytest.raises(DataError, match=r"rows.jsonl:1: data.columns renames \['answer'\] but the rows have no "
                                        r"such field \(fields: \['id', 'question', 'response_j', 'response_k'\]\)"):
        records_of(tmp_path, rows, "pairs", columns={**renamed, "answer": "completion"})


def test_columns_on_the_command_line(alignkit_compose):
    cfg = alignkit_compose("method=dpo", "data.path=se.jsonl", "data.columns={question: prompt, response_j: chosen}")
    assert OmegaConf.to_container(cfg.data.columns) == {"question": "prompt", "response_j": "chosen"}


# ----------------------------------------------------------------------------- README commands, no data.format
SFT_ROWS = [{"messages": [user(f"Say {i}."), assistant(f"{i}")]} for i in range(12)]
RANKED_ROWS = [{"prompt": f"Say {i}.", "completions": [f"{i}", f"{i} {i}", "no"]} for i in range(12)]


@pytest.mark.parametrize("method, rows", [("sft", SFT_ROWS), ("reward_model", RANKED_ROWS)],
                         ids=["sft-chat", "reward_model-kwise-ranked"])
def test_readme_train_commands_take_a_file_without_its_format(alignkit_run, tmp_path, method, rows):
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    extra = ["loss=kwise"] if method == "reward_model" else []
    result = alignkit_run(f"method={method}", *extra, f"data.path={path}", "trainer.max_steps=1",
                          "trainer.batch_size=2", "trainer.eval_batch_size=4", run_dir=tmp_path / "run")
    assert result.steps == 1 and result.eval_after
    assert all(torch.isfinite(torch.tensor(v)) for k, v in result.eval_after.items() if "_ci_" not in k)  # n = 1


def test_eval_commands_infer_the_format_of_their_files(tmp_path):
    from alignkit.plugins.commands.evaluate.generation import read_prompts

    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": [SYSTEM, user("Hi")], "answer": "x"}])
    assert read_prompts(str(path)) == [[SYSTEM, user("Hi")]]
    pairs = write_jsonl(tmp_path / "hh.jsonl", [INFERRED["hh_rlhf"]])
    assert read_prompts(str(pairs)) == [[user("Hi there")]]
