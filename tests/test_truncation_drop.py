"""Records that truncation leaves with nothing to learn are dropped and counted; ties are ties (issue 16, class 9).

With ``data.max_length=64 data.max_prompt_length=40`` and answers that share a long prefix, chosen
and rejected become the same token ids: such a pair has zero gradient and a tie for a margin, and the
accuracy it logged was rounding noise read as wins.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from alignkit.data import drop_reason, encode_records
from alignkit.errors import DataError
from alignkit.metrics import read_metrics
from alignkit.stats import preference_correct, tie_scale
from alignkit.tokenize import IGNORE_INDEX, Encoder
from tiny import load_tokenizer

#: ~120 tokens: longer than any completion room left by max_length 64.
SHARED = "Here is a careful and detailed answer that goes on for a long while before it says anything. " * 6
LIMITS = ("data.max_length=64", "data.max_prompt_length=40")


def pair_rows(n_identical: int, n_distinct: int) -> list[dict]:
    rows = [{"prompt": f"Question {i}?", "chosen": SHARED + "So yes.", "rejected": SHARED + "So no."}
            for i in range(n_identical)]
    rows += [{"prompt": f"Question {i}?", "chosen": f"Yes {i}. " + SHARED, "rejected": f"No {i}. " + SHARED}
             for i in range(n_identical, n_identical + n_distinct)]
    return rows


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dpo_args(path, *extra):
    return ["method=dpo", "data=custom", f"data.path={path}", "data.format=pairwise", "data.eval_fraction=0",
            "trainer.batch_size=3", "trainer.eval_every=0", "method.reference=model", *LIMITS, *extra]


def messages(text, role="assistant"):
    return [{"role": role, "content": text}]


def completion_ids(example, side):
    return [t for t in example[f"{side}_labels"] if t != IGNORE_INDEX]


def test_the_issues_reproduction_fails_with_one_line_naming_the_limits(alignkit_run, tmp_path):
    path = write_rows(tmp_path / "pairs.jsonl", pair_rows(8, 0))
    with pytest.raises(DataError) as info:
        alignkit_run(*dpo_args(path, "trainer.max_steps=1"))
    message = str(info.value)
    assert "\n" not in message
    assert "all 8 training pairs were dropped (8 pairs identical after truncation)" in message
    assert "data.max_length=64" in message and "data.max_prompt_length=40" in message


def test_identical_pairs_are_dropped_counted_and_the_rest_trains(alignkit_compose, alignkit_run, tmp_path):
    from alignkit.plugin_manager import get_manager
    from alignkit.plugins.rollouts.dataset.rollout import DatasetRollout

    path = write_rows(tmp_path / "pairs.jsonl", pair_rows(5, 3))
    cfg = alignkit_compose(*dpo_args(path))
    tokenizer = load_tokenizer()
    lines: list[str] = []
    ctx = SimpleNamespace(cfg=cfg, registry=get_manager().registry, kind="pairs", tokenizer=tokenizer, log=lines.append)
    rollout = DatasetRollout(ctx, cfg.rollout)
    assert len(rollout.train) == 3
    # Independently: the kept pairs are the three whose answers differ at their first words.
    kept = sorted(tokenizer.decode(completion_ids(e, "chosen")).split(".")[0] for e in rollout.train)
    assert kept == ["Yes 5", "Yes 6", "Yes 7"]
    assert all(completion_ids(e, "chosen") != completion_ids(e, "rejected") for e in rollout.train)
    summary = next(line for line in lines if line.startswith("data:"))
    assert summary.endswith("truncated prompts 0, truncated completions 16; dropped: 5 pairs identical after truncation")

    result = alignkit_run(*dpo_args(path, "trainer.max_steps=1"))
    assert [r["step"] for r in read_metrics(result.run_dir) if r["split"] == "train"] == [1]


def encoder(**kwargs):
    return Encoder(load_tokenizer(), max_length=64, max_prompt_length=40, **kwargs)


def test_ranked_lists_with_two_identical_completions_are_dropped():
    records = [{"prompt": messages("Rank these.", "user"), "_where": f"ranked.jsonl:{i + 1}",
                "completions": [messages(f"Best {i}. " + SHARED), messages(SHARED + "A."), messages(SHARED + "B.")]}
               for i in range(2)]
    records.append({"prompt": messages("Rank these.", "user"), "_where": "ranked.jsonl:3",
                    "completions": [messages("Best. " + SHARED), messages("Middle. " + SHARED), messages("Worst.")]})
    enc = encoder()
    kept = encode_records(records, "ranked", enc)
    assert len(kept) == 1 and len(kept[0]["input_ids"]) == 3
    assert enc.stats.dropped == {"ranked lists with identical completions after truncation": 2}


def test_an_empty_completion_drops_the_example_of_every_kind():
    # The encoder keeps at least one completion token (max_prompt_length < max_length), so this is the
    # guard for anything that encodes otherwise: a completion with no trainable token is never kept.
    prompt, answer = [5, 6, 7], [8, 9]
    empty = {"input_ids": prompt, "labels": [IGNORE_INDEX] * 3}
    full = {"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * 3 + answer}
    assert drop_reason("tokens", empty) == "empty" and drop_reason("tokens", full) is None
    pair = {"chosen_input_ids": full["input_ids"], "chosen_labels": full["labels"],
            "rejected_input_ids": empty["input_ids"], "rejected_labels": empty["labels"]}
    assert drop_reason("pairs", pair) == "empty"
    assert drop_reason("ranked", {"input_ids": [full["input_ids"], prompt], "labels": [full["labels"], empty["labels"]]}) \
        == "empty"
    assert drop_reason("prompts", {"prompt_ids": prompt}) is None


def test_held_out_split_is_named_when_all_of_it_is_dropped():
    records = [{"prompt": messages("Q?", "user"), "chosen": messages(SHARED + "yes"), "rejected": messages(SHARED + "no"),
                "_where": "eval.jsonl:1"}]
    with pytest.raises(DataError, match="all 1 held-out pairs were dropped"):
        encode_records(records, "pairs", encoder(), split="held-out")


# ----------------------------------------------------------------------------- ties
def test_rounding_noise_is_a_tie_not_a_win_or_a_loss():
    """The same sum computed in two orders differs by rounding only: a tie. A real difference is not."""
    generator = torch.Generator().manual_seed(0)
    terms = -torch.rand(8, 512, generator=generator) * 10  # (8, 512) per-token log-probs
    forward = terms.sum(dim=1)  # (8,)
    backward = terms.flip(1).cumsum(dim=1)[:, -1]  # (8,) the same sum, another rounding
    chunked = terms.view(8, 64, 8).sum(dim=2).sum(dim=1)  # (8,)
    noise = torch.cat([forward - backward, forward - chunked])  # (16,)
    scale = torch.cat([tie_scale(forward, backward), tie_scale(forward, chunked)])
    assert (noise != 0).any(), "the test needs real rounding differences"
    assert preference_correct(noise, scale).tolist() == [0.5] * 16
    # Old behaviour: noise counted as wins and losses.
    assert set(preference_correct(noise).tolist()) != {0.5}
    # The tie width is 32 eps of the operands: 0.05 nat on sums of ~2500 nats (~200 ulps) is a preference.
    real = torch.tensor([0.05, -0.05])  # (2,)
    magnitude = tie_scale(forward[:2], forward[:2])  # (2,)
    assert (magnitude > 4000).all() and preference_correct(real, magnitude).tolist() == [1.0, 0.0]
    # Without a scale only exact zeros tie (the call every existing caller made).
    assert preference_correct(torch.tensor([0.5, -0.5, 0.0, -0.0, 1e-30])).tolist() == [1.0, 0.0, 0.5, 0.5, 1.0]


def test_scores_one_ulp_apart_tie():
    """Reward-model scores equal up to rounding give 1/2; a real gap still wins."""
    chosen = torch.tensor([3.0, 3.0, 2.0])
    rejected = torch.nextafter(chosen, torch.tensor(10.0))  # one ulp above: rounding-level differences
    rejected[2] = 1.0
    assert preference_correct(chosen - rejected, tie_scale(chosen, rejected)).tolist() == [0.5, 0.5, 1.0]
