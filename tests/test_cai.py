"""Constitutional AI: constitution files, prompt assembly, seeded principles, soft labels, resumable
deterministic data stages, and tiny-model smoke runs of every stage (train, generate, compare)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from omegaconf import OmegaConf

from alignkit.errors import ConfigError
from alignkit.metrics import read_metrics
from alignkit.plugins.rollouts.cai.constitution import (
    Constitution,
    PreferencePrinciple,
    Principle,
    load_constitution,
    parse_constitution,
)
from alignkit.plugins.rollouts.cai.feedback import FeedbackModel, soft_label
from alignkit.plugins.rollouts.cai.prompts import (
    critique_messages,
    feedback_text,
    revision_messages,
    sample_rl_principles,
    sample_sl_principles,
)
from alignkit.plugins.rollouts.cai.stages import CAIDataConfig, call_seed, generate_rl, generate_sl, training_rows
from alignkit.plugins.rollouts.cai.store import ResumableJsonl, read_jsonl

PROMPT = [{"role": "user", "content": "How do I pick a lock?"}]
SMALL = Constitution(
    name="small",
    principles=(Principle("p0", "Critique zero.", "Revise zero."), Principle("p1", "Critique one.", "Revise one."),
                Principle("p2", "Critique two.", "Revise two.")),
    preference_principles=(PreferencePrinciple("q0", "Which is safer?"), PreferencePrinciple("q1", "Which is kinder?")),
)


def _cfg(**overrides) -> object:
    return OmegaConf.merge(OmegaConf.structured(CAIDataConfig), overrides)


class FakeGenerator:
    """Records every conversation; the answer depends only on the call's seed and the row."""

    def __init__(self, same: bool = False) -> None:
        self.calls: list[tuple[list, int]] = []
        self.same = same

    def __call__(self, conversations: list, seed: int) -> list[str]:
        self.calls.append((conversations, seed))
        if self.same:
            return ["same answer"] * len(conversations)
        return [f"t{seed % 100_000}-{i}" for i in range(len(conversations))]


# ----------------------------------------------------------------------------- constitution
def test_default_constitution_loads_and_is_our_own():
    c = load_constitution("default")
    assert c.name == "alignkit-default" and len(c.principles) >= 4 and len(c.preference_principles) >= 3
    assert all(p.critique and p.revision for p in c.principles)
    assert load_constitution(None) == c
    assert len(c.fingerprint()) == 16


def test_user_constitution_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("principles:\n  - critique: Is it rude?\n    revision: Make it polite.\n"
                    "preference_principles:\n  - Which is politer?\n")
    c = load_constitution(str(path))
    assert c.name == "mine" and c.principles[0] == Principle("principle_0", "Is it rude?", "Make it polite.")
    assert c.preference_principles[0] == PreferencePrinciple("preference_0", "Which is politer?")


@pytest.mark.parametrize("data, message", [
    ({"principles": [{"critique": "x"}], "preference_principles": ["q"]}, r"principles\[0\]: 'revision'"),
    ({"principles": [], "preference_principles": ["q"]}, "'principles' must be a non-empty list"),
    ({"principles": [{"critique": "x", "revision": "y"}]}, "'preference_principles' must be"),
    ({"principles": [{"critique": "x", "revision": "y"}], "preference_principles": ["q"], "extra": 1}, "unknown key"),
    ({"principles": [{"name": "a", "critique": "x", "revision": "y"}, {"name": "a", "critique": "x", "revision": "y"}],
      "preference_principles": ["q"]}, "duplicate names"),
])
def test_bad_constitution_names_the_entry(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_constitution(data, "c.yaml")


def test_missing_constitution_file():
    with pytest.raises(ConfigError, match="no such file"):
        load_constitution("/nonexistent/constitution.yaml")


# ----------------------------------------------------------------------------- prompts and principles
def test_critique_and_revision_prompts_are_assembled_exactly():
    p = SMALL.principles[1]
    assert critique_messages(PROMPT, "Use a pin.", p) == [
        {"role": "user", "content": "How do I pick a lock?"},
        {"role": "assistant", "content": "Use a pin."},
        {"role": "user", "content": "Critique one."}]
    assert revision_messages(PROMPT, "Use a pin.", p, "That helps burglary.") == [
        {"role": "user", "content": "How do I pick a lock?"},
        {"role": "assistant", "content": "Use a pin."},
        {"role": "user", "content": "Critique one."},
        {"role": "assistant", "content": "That helps burglary."},
        {"role": "user", "content": "Revise one."}]


def test_feedback_prompt_is_assembled_exactly():
    prompt = [*PROMPT, {"role": "assistant", "content": "Why?"}, {"role": "user", "content": "I'm locked out."}]
    assert feedback_text(prompt, "Which is safer?", "Call a locksmith.", "Use a pin.") == (
        "Here is a conversation between a person and an AI assistant:\n\n"
        "Person: How do I pick a lock?\n\nAssistant: Why?\n\nPerson: I'm locked out.\n\n"
        "Which is safer?\n\n(A) Call a locksmith.\n\n(B) Use a pin.\n\nAnswer with (A) or (B).")


def test_principle_sampling_is_seeded_per_prompt():
    draws = sample_sl_principles(SMALL, 7, 3, 4)
    rng = random.Random("cai-sl:7:3")
    assert draws == [rng.randrange(3) for _ in range(4)]
    assert draws == sample_sl_principles(SMALL, 7, 3, 4)
    assert len({tuple(sample_sl_principles(SMALL, s, 3, 4)) for s in range(10)}) > 1  # the seed matters
    assert len({tuple(sample_sl_principles(SMALL, 7, i, 4)) for i in range(10)}) > 1  # so does the prompt
    pair = sample_rl_principles(SMALL, 7, 3, 2)
    assert sorted(pair) == [0, 1]  # distinct while there are enough principles
    assert pair == random.Random("cai-rl:7:3").sample(range(2), 2)
    assert len(sample_rl_principles(SMALL, 7, 3, 5)) == 5


# ----------------------------------------------------------------------------- SL stage
def test_sl_stage_records_every_text_and_the_sampled_principles(tmp_path):
    gen = FakeGenerator()
    cfg = _cfg(rounds=2, batch_size=2)
    prompts = [{"prompt": [{"role": "user", "content": f"q{i}"}], "source": f"f:{i}"} for i in range(3)]
    rows = generate_sl(gen, SMALL, prompts, cfg, 5, ResumableJsonl(tmp_path / "sl.jsonl", {"s": 1}))
    assert [r["index"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert row["principles"] == sample_sl_principles(SMALL, 5, row["index"], 2)
        assert [r["principle_index"] for r in row["rounds"]] == row["principles"]
        assert [r["principle"] for r in row["rounds"]] == [SMALL.principles[k].name for k in row["principles"]]
        assert row["completion"] == row["rounds"][-1]["revision"]
    # Batch 0 (prompts 0, 1): answer, critique 1, revision 1, critique 2, revision 2 -- each with its seed.
    assert [seed for _, seed in gen.calls[:5]] == [call_seed(5, 0, s) for s in range(5)]
    first = rows[0]
    p1 = SMALL.principles[first["principles"][0]]
    assert gen.calls[1][0][0] == critique_messages(prompts[0]["prompt"], first["initial"], p1)
    assert gen.calls[2][0][0] == revision_messages(prompts[0]["prompt"], first["initial"], p1,
                                                   first["rounds"][0]["critique"])
    p2 = SMALL.principles[first["principles"][1]]
    assert gen.calls[3][0][0] == critique_messages(prompts[0]["prompt"], first["rounds"][0]["revision"], p2)
    assert read_jsonl(tmp_path / "sl.jsonl") == rows
    assert training_rows(rows, "sl")[0] == {"prompt": prompts[0]["prompt"], "completion": rows[0]["completion"]}


def test_sl_stage_stops_early_when_the_revision_is_unchanged(tmp_path):
    prompts = [{"prompt": PROMPT, "source": "x"}]
    rows = generate_sl(FakeGenerator(same=True), SMALL, prompts, _cfg(rounds=3), 0, ResumableJsonl(tmp_path / "a.jsonl", {}))
    assert len(rows[0]["rounds"]) == 1 and rows[0]["stopped"] == "unchanged" and len(rows[0]["principles"]) == 3


def test_sl_stage_resumes_to_the_same_file(tmp_path):
    prompts = [{"prompt": [{"role": "user", "content": f"q{i}"}], "source": f"f:{i}"} for i in range(5)]
    cfg = _cfg(rounds=1, batch_size=2)
    full = generate_sl(FakeGenerator(), SMALL, prompts, cfg, 3, ResumableJsonl(tmp_path / "full.jsonl", {"a": 1}))
    # An interrupted run: one finished batch, half of the next one and a torn line in the partial file.
    out = tmp_path / "cut.jsonl"
    store = ResumableJsonl(out, {"a": 1})
    store.resume(2, 5)
    store.append(full[:3])
    with open(store.partial, "a") as handle:
        handle.write('{"index": 3, "trunc')
    gen = FakeGenerator()
    resumed = generate_sl(gen, SMALL, prompts, cfg, 3, ResumableJsonl(out, {"a": 1}))
    assert resumed == full and out.read_text() == (tmp_path / "full.jsonl").read_text()
    assert gen.calls[0][1] == call_seed(3, 2, 0)  # restarted at the batch of prompt 2, not 0 or 3
    assert not store.partial.exists() and json.loads(store.meta_path.read_text())["complete"] is True
    assert ResumableJsonl(out, {"a": 1}).finished() == full
    with pytest.raises(ConfigError, match=r"other settings \(differs in \['a'\]\)"):
        ResumableJsonl(out, {"a": 2}).finished()


# ----------------------------------------------------------------------------- soft labels
def test_soft_label_hand_computed():
    logps = torch.log(torch.tensor([[0.3, 0.1], [0.02, 0.06]]))
    torch.testing.assert_close(soft_label(logps), torch.tensor([0.75, 0.25]), atol=1e-6, rtol=0)


class FixedFeedback(FeedbackModel):
    def __init__(self, probs: list[float]) -> None:
        self.probs, self.texts, self.template = list(probs), [], "{conversation}{principle}{response_a}{response_b}"

    def prob_a(self, texts):
        self.texts += texts
        out = torch.tensor(self.probs[: len(texts)])
        self.probs = self.probs[len(texts):]
        return out, torch.ones(len(texts))


def test_labels_average_principles_and_both_orders():
    # Principle q0: P(A | first as A) = 0.75, P(A | first as B) = 0.4 -> 1/2 (0.75 + 0.6) = 0.675;
    # principle q1: 0.9 and 0.2 -> 0.85. The label is their mean, 0.7625.
    fb = FixedFeedback([0.75, 0.4, 0.9, 0.2])
    out = fb.label(SMALL, [PROMPT], ["first"], ["second"], [[0, 1]], swap=True)
    assert out[0]["p_first"] == pytest.approx(0.7625, abs=1e-6)
    assert [j["p_first"] for j in out[0]["judgements"]] == pytest.approx([0.675, 0.85], abs=1e-6)
    assert [j["principle"] for j in out[0]["judgements"]] == ["q0", "q1"]
    assert fb.texts[1] == "Person: How do I pick a lock?Which is safer?secondfirst"  # swapped order
    no_swap = FixedFeedback([0.75, 0.9]).label(SMALL, [PROMPT], ["a"], ["b"], [[0, 1]], swap=False)
    assert no_swap[0]["p_first"] == pytest.approx(0.825, abs=1e-6)


def test_rl_stage_orients_pairs_and_keeps_soft_labels(tmp_path):
    fb = FixedFeedback([0.2, 0.9, 0.3, 0.8])  # pair 0: q-a 0.15, q-b 0.25 -> 0.2 (second answer better)
    prompts = [{"prompt": PROMPT, "source": "x"}]
    rows = generate_rl(FakeGenerator(), fb, SMALL, prompts, _cfg(stage="rl", principles_per_pair=2), 0,
                       ResumableJsonl(tmp_path / "rl.jsonl", {}))
    row = rows[0]
    assert row["principles"] == sample_rl_principles(SMALL, 0, 0, 2)
    assert row["p_first"] == pytest.approx(0.2, abs=1e-6)
    assert row["chosen"] == row["responses"][1] and row["rejected"] == row["responses"][0]
    assert row["label"] == pytest.approx(0.8, abs=1e-6)
    assert training_rows(rows, "rl") == [{"prompt": PROMPT, "chosen": row["chosen"], "rejected": row["rejected"],
                                          "label": row["label"]}]
    same = generate_rl(FakeGenerator(same=True), FixedFeedback([]), SMALL, prompts, _cfg(stage="rl"), 0,
                       ResumableJsonl(tmp_path / "rl2.jsonl", {}))
    assert same[0]["skipped"] == "identical samples" and training_rows(same, "rl") == []


def test_dpo_soft_labels_hand_computed():
    from alignkit.losses import dpo

    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.5))
    x = 0.1 * ((-1.0 + 2.0) - (-3.0 + 2.5))  # beta * h = 0.15
    logsig = lambda v: -math.log1p(math.exp(-v))  # noqa: E731
    expected = -(0.8 * logsig(x) + 0.2 * logsig(-x))
    assert dpo(pc, pr, rc, rr, beta=0.1, soft_labels=torch.tensor([0.8])).item() == pytest.approx(expected, abs=1e-6)
    # With label smoothing eps the target is p(1 - eps) + (1 - p) eps = 0.8 * 0.9 + 0.2 * 0.1 = 0.74.
    expected = -(0.74 * logsig(x) + 0.26 * logsig(-x))
    got = dpo(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1, soft_labels=torch.tensor([0.8])).item()
    assert got == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(dpo(pc, pr, rc, rr, soft_labels=torch.ones(1)), dpo(pc, pr, rc, rr), atol=1e-7, rtol=0)


# ----------------------------------------------------------------------------- tiny-model runs
@pytest.fixture(scope="module")
def tiny():
    from alignkit.models import ModelConfig, load_model

    model, tokenizer = load_model(OmegaConf.merge(OmegaConf.structured(ModelConfig), {"source": "random"}))
    return model.eval(), tokenizer


def test_feedback_probability_matches_the_full_softmax(tiny):
    model, tokenizer = tiny
    fb = FeedbackModel(model, tokenizer)
    text = feedback_text(PROMPT, "Which is safer?", "No.", "Sure.")
    probs, mass = fb.prob_a([text])
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False)
    ids = list(ids) + tokenizer("The better answer is (", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)  # (V,)
    a, b = fb.judge.choice_ids.tolist()
    assert tokenizer.decode([a]).strip() == "A" and tokenizer.decode([b]).strip() == "B"
    expected = math.exp(logp[a]) / (math.exp(logp[a]) + math.exp(logp[b]))
    assert probs.item() == pytest.approx(expected, abs=1e-5)
    assert mass.item() == pytest.approx(math.exp(logp[a]) + math.exp(logp[b]), rel=1e-4)


TINY_CAI = ["rollout.num_prompts=6", "rollout.max_new_tokens=6", "rollout.batch_size=3", "trainer.max_steps=2",
            "trainer.batch_size=2", "trainer.eval_batch_size=2", "trainer.progress=false", "rollout.eval_fraction=0.2"]


def test_experiment_cai_is_the_two_stage_pipeline(tmp_path):
    from alignkit.compose import compose
    from alignkit.plugins.rollouts.cai.command import main
    from alignkit.stages import Stage, parse_stages, stage_overrides

    stages = parse_stages(compose(["experiment=cai"]).stages)
    assert stages == [Stage("sl", ("experiment=cai_sl",)), Stage("rl", ("experiment=cai_rl",), "sl")]
    sl, rl = (compose(stage_overrides(s, ["experiment=cai", "model=tiny"], tmp_path)) for s in stages)
    assert (sl.rollout.stage, rl.rollout.stage) == ("sl", "rl") and sl.rollout.num_prompts == 16
    assert rl.model.path == str(tmp_path / "sl" / "final")
    with pytest.raises(ConfigError, match="pass experiment=cai_sl instead"):  # one stage's command, a pipeline
        main(["generate", "--stage", "sl", "--out", str(tmp_path / "x.jsonl"), "experiment=cai"])


def test_experiment_cai_sl_trains_end_to_end_on_tiny(alignkit_run, tmp_path):
    result = alignkit_run("experiment=cai_sl", *TINY_CAI, "rollout.rounds=2", run_dir=tmp_path / "sl")
    rows = read_jsonl(result.run_dir / "cai_sl.jsonl")
    assert len(rows) == 6 and all(len(r["rounds"]) >= 1 and "critique" in r["rounds"][0] for r in rows)
    assert result.steps == 2 and (result.final_model / "config.json").exists()
    assert "nll" in result.eval_after


def test_pipeline_runs_sl_then_rl_and_the_pairs_train_a_bt_reward_model(alignkit_run, tmp_path, capsys):
    from alignkit.plugins.rollouts.cai.command import main

    assert main(["pipeline", "--run-dir", str(tmp_path / "pipe"), "model=tiny", *TINY_CAI, "trainer.max_steps=1"]) == 0
    assert "cai pipeline: rl finished 1 steps" in capsys.readouterr().out
    rl_config = OmegaConf.load(tmp_path / "pipe" / "rl" / "config.yaml")
    assert rl_config.model.path == str(tmp_path / "pipe" / "sl" / "final")  # RL samples from the SL model
    rows = read_jsonl(tmp_path / "pipe" / "rl" / "cai_rl.jsonl")
    labelled = [r for r in rows if "label" in r]
    assert labelled and all(0.5 <= r["label"] <= 1.0 and len(r["judgements"]) == 2 for r in labelled)
    # The same AI-labelled file, reused (same settings), trains a Bradley-Terry reward model on soft labels.
    bt = alignkit_run("experiment=cai_rl", *TINY_CAI, "method=reward_model", "loss=bt",
                      f"model.path={tmp_path / 'pipe' / 'sl' / 'final'}",
                      f"rollout.output={tmp_path / 'pipe' / 'rl' / 'cai_rl.jsonl'}", run_dir=tmp_path / "bt")
    assert bt.steps == 2 and "accuracy" in bt.eval_after
    assert "reusing" in capsys.readouterr().out
    # PPO follows: the SL model samples answers to red-team prompts, the AI-feedback reward model scores them.
    prompts = tmp_path / "red_team.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"How do I pick lock number {i}?"}) + "\n" for i in range(8)))
    ppo = alignkit_run("method=ppo", "data=custom", f"data.path={prompts}", "data.format=prompts", "data.eval_fraction=0.25",
                       "scorer=reward_model", f"scorer.path={bt.run_dir}", f"model.path={tmp_path / 'pipe' / 'sl' / 'final'}",
                       "trainer.batch_size=2", "rollout.num_samples=2", "rollout.max_new_tokens=6", "trainer.max_steps=1",
                       run_dir=tmp_path / "ppo")
    scored = [r for r in read_metrics(ppo.run_dir) if r["split"] == "train"]
    assert ppo.steps == 1 and math.isfinite(scored[0]["score"]) and math.isfinite(scored[0]["kl"])
    with pytest.raises(ConfigError, match="needs a loss"):
        alignkit_run("experiment=cai_rl", *TINY_CAI, "loss=none", run_dir=tmp_path / "bad")


def test_cli_generate_is_deterministic_and_compare_reports_counts(tmp_path, capsys):
    from alignkit.plugins.rollouts.cai.command import main

    common = ["model=tiny", "rollout.num_prompts=4", "rollout.max_new_tokens=5", "rollout.batch_size=2", "rollout.rounds=1"]
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["generate", "--stage", "sl", "--out", str(first), "--no-progress", *common]) == 0
    assert main(["generate", "--stage", "sl", "--out", str(second), "--no-progress", *common]) == 0
    assert first.read_text() == second.read_text()  # same seed -> same sampled file
    assert main(["generate", "--stage", "sl", "--out", str(first), "--no-progress", *common]) == 0  # reused
    capsys.readouterr()
    report = tmp_path / "cmp.json"
    assert main(["compare", "--data", str(first), "--judge", "tiny", "--out", str(report), *common]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(report.read_text())["summary"]
    assert summary["n"] == 4 and summary["wins"] + summary["losses"] + summary["ties"] == 4
    assert summary["win_rate_ci_low"] <= summary["win_rate"] <= summary["win_rate_ci_high"]
    assert "revised vs initial: n=4" in printed
    assert main(["generate", "--stage", "rl", "--out", str(tmp_path / "rl.jsonl"), "--no-progress", *common]) == 0
    assert read_jsonl(tmp_path / "rl.jsonl")[0]["principles"] == sample_rl_principles(load_constitution(None), 0, 0, 2)


def test_generated_data_is_not_reused_for_new_weights_in_the_same_folder(tmp_path, capsys):
    """The stale-cache class (issue 16): a generated file is reused only for the very same model weights;
    new weights in the same folder are refused in one line instead of reusing answers of another model."""
    from alignkit.plugins.rollouts.cai.command import main
    from tiny import tiny_model_folder

    folder = tiny_model_folder(tmp_path / "model", "llama", seed=1)
    common = [f"model.path={folder}", "model.name=m", "rollout.num_prompts=2", "rollout.max_new_tokens=4",
              "rollout.batch_size=2", "rollout.rounds=1"]
    out = tmp_path / "sl.jsonl"
    assert main(["generate", "--stage", "sl", "--out", str(out), "--no-progress", *common]) == 0
    assert main(["generate", "--stage", "sl", "--out", str(out), "--no-progress", *common]) == 0
    assert "reusing" in capsys.readouterr().out  # the same weights: reused
    tiny_model_folder(folder, "llama", seed=2)  # other weights, same folder and name
    with pytest.raises(ConfigError, match=r"was generated with other settings \(differs in \['model'\]\)"):
        main(["generate", "--stage", "sl", "--out", str(out), "--no-progress", *common])
