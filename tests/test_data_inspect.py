"""``alignkit data inspect <path>``: the first thing a user runs on new data (issue 20).

The expected rendering and token lengths come from the tokenizer's own ``apply_chat_template``.
"""

from __future__ import annotations

import math
import statistics

import pytest

from conftest import write_jsonl

ROWS = [{"question": f"What is {i} plus {i}?" + " Think." * (i % 4), "good": f"It is {2 * i}.",
         "bad": "I will not say." + " No." * i} for i in range(9)]
COLUMNS = "question=prompt,good=chosen,bad=rejected"


def _tokenizer():
    from tiny import load_tokenizer

    return load_tokenizer()


def _summary(values: list[int]) -> str:
    ordered = sorted(values)
    p95 = ordered[math.ceil(0.95 * len(ordered)) - 1]
    return (f"min {ordered[0]}  median {statistics.median(ordered):g}  mean {sum(ordered) / len(ordered):.1f}  "
            f"p95 {p95}  max {ordered[-1]}")


def test_inspect_prints_format_kind_counts_a_rendered_example_and_lengths(cli_main, tmp_path):
    path = write_jsonl(tmp_path / "se.jsonl", ROWS)
    code, out, err = cli_main("data", "inspect", str(path), "--columns", COLUMNS, "--example", "3",
                              "--max-prompt-length", "40")
    assert code == 0, err
    assert "  format     pairwise (inferred from the fields chosen, prompt, rejected;" in out
    assert "  records    9 of kind 'pairs' (also usable as: tokens, ranked, prompts)" in out

    tokenizer = _tokenizer()
    render = lambda messages, **kw: tokenizer.apply_chat_template(messages, tokenize=False, **kw)  # noqa: E731
    ids = lambda messages, **kw: tokenizer.apply_chat_template(messages, return_dict=False, **kw)  # noqa: E731
    row = ROWS[2]
    prompt = [{"role": "user", "content": row["question"]}]
    head = render(prompt, add_generation_prompt=True)
    chosen = render(prompt + [{"role": "assistant", "content": row["good"]}])[len(head):]
    n_head = len(ids(prompt, add_generation_prompt=True))
    example = out[out.index("  example 3 of 9"):out.index("  tokens (before truncation)")]
    assert f"--- prompt ({n_head} tokens) ---\n" + "".join(f"    {line}\n" for line in head.splitlines()) in example
    assert "--- chosen (" in example and "".join(f"    {line}\n" for line in chosen.splitlines()) in example

    prompts, answers = [], {"chosen": [], "rejected": []}
    for r in ROWS:
        p = [{"role": "user", "content": r["question"]}]
        prompts.append(len(ids(p, add_generation_prompt=True)))
        for name, key in (("chosen", "good"), ("rejected", "bad")):
            answers[name].append(len(ids(p + [{"role": "assistant", "content": r[key]}])) - prompts[-1])
    sequences = [p + a for name in ("chosen", "rejected") for p, a in zip(prompts, answers[name])]
    assert f"    prompt    {_summary(prompts)}\n" in out
    assert f"    chosen    {_summary(answers['chosen'])}\n" in out
    assert f"    rejected  {_summary(answers['rejected'])}\n" in out
    assert f"    sequence  {_summary(sequences)}  (prompt + answer)\n" in out
    over = sum(n > 40 for n in prompts)
    assert 0 < over < 9, "the example data straddles the cap"
    assert f"    {over} of 9 prompts over data.max_prompt_length=40 (kept by their end); 0 of 18 sequences over " \
           "data.max_length=512 (answers cut)" in out


def test_inspect_reads_as_a_kind_with_a_trained_models_encoding(cli_main, tmp_path):
    from alignkit.encoding import EncodingSettings
    from tiny import tiny_model_folder

    model = tiny_model_folder(tmp_path / "model", "llama")
    EncodingSettings(chat_template=True, system_prompt="Answer in one word.", max_length=64,
                     max_prompt_length=48).save(model)
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi", "chosen": "Yo", "rejected": "No"}])
    code, out, err = cli_main("data", "inspect", str(path), "--kind", "tokens", "--model", str(model))
    assert code == 0, err
    assert "  records    1 of kind 'tokens' (also usable as: prompts)" in out
    head = _tokenizer().apply_chat_template([{"role": "system", "content": "Answer in one word."},
                                             {"role": "user", "content": "Hi"}], tokenize=False,
                                            add_generation_prompt=True)
    assert "".join(f"    {line}\n" for line in head.splitlines()) in out
    assert "--- completion (" in out and "--- rejected" not in out
    assert "0 of 1 prompts over data.max_prompt_length=48" in out and "data.max_length=64" in out


@pytest.mark.parametrize("rows, args, message", [
    ([{"question": "q", "answer": "a"}], [], "no data format reads rows with fields ['answer', 'question']"),
    ([{"prompt": "p", "chosen": "c", "rejected": "r"}], ["--kind", "unpaired"],
     "data.format=pairwise gives 'pairs' records but this method needs 'unpaired' records"),
    ([{"prompt": "p", "chosen": "c", "rejected": "r"}], ["--example", "5"], "--example 5: the data has records 1..1"),
])
def test_inspect_errors_are_one_line(cli_main, tmp_path, rows, args, message):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    code, out, err = cli_main("data", "inspect", str(path), *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
