"""Issue 21, parts 3 and 4: help that says what alignkit is, errors that name what the user typed,
empty answers that say so, and long steps whose progress bar has a total (hence an ETA)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from alignkit.generation import Completion
from conftest import write_jsonl

#: The groups a user chooses from, and options each one has in this repository (conf/ and the built-in plugins).
USER_GROUPS = {
    "method": {"dpo", "grpo", "ppo", "reinforce", "reward_model", "sft", "steerlm"},
    "loss": {"dpo", "ipo", "bt", "kwise", "grpo", "dr_grpo", "none"},
    "model": {"smollm2", "tiny"},
    "data": {"hh_harmless", "arith", "brief_prompts", "custom"},
    "rollout": {"dataset", "generate", "cai"},
    "scorer": {"none", "reward_model", "math", "judge"},
    "trainer": {"default", "ddp", "fsdp", "deepspeed", "deepspeed_zero3"},
    "probe": {"none", "everyday"},
    "experiment": {"quickstart", "dpo_hh", "grpo_arith", "rm_hh"},
}


def group_options(help_text: str) -> dict[str, list[str]]:
    """``{group: [option, ...]}`` as the help lists them: a ``  group  text`` line, then indented option lines."""
    groups: dict[str, list[str]] = {}
    current = None
    for line in help_text.splitlines():
        head = re.match(r"^  (\w+)\s{2,}\S", line)
        if head and not line.startswith("   "):
            current = head.group(1)
            groups[current] = []
        elif current and line.startswith(" " * 14) and line.strip():
            groups[current] += line.split()
        else:
            current = None
    return groups


def test_train_help_starts_with_what_alignkit_is_and_lists_the_user_groups(cli_main):
    code, out, err = cli_main("train", "--help")
    assert code == 0, err
    first = out.splitlines()[:4]
    assert first[0].startswith("alignkit train:") and "plugin registry of LLM alignment methods" in " ".join(first)
    assert "Hydra" not in out.split("More:")[0] and "schema" not in out
    groups = group_options(out)
    assert list(groups) == list(USER_GROUPS)  # in this order, nothing else
    for group, expected in USER_GROUPS.items():
        assert expected <= {o.rstrip("*") for o in groups[group]}, group
    chosen = {g: [o[:-1] for o in opts if o.endswith("*")] for g, opts in groups.items()}
    assert chosen["method"] == ["sft"] and chosen["model"] == ["smollm2"] and chosen["data"] == ["hh_harmless"]
    assert chosen["experiment"] == [] and "(none" in groups["experiment"]


def test_train_help_marks_what_the_overrides_choose(cli_main):
    code, out, _ = cli_main("train", "method=dpo", "model=tiny", "-h")
    chosen = {g: [o[:-1] for o in opts if o.endswith("*")] for g, opts in group_options(out).items()}
    assert code == 0 and chosen["method"] == ["dpo"] and chosen["loss"] == ["dpo"] and chosen["model"] == ["tiny"]
    code, out, _ = cli_main("train", "model=nope", "--help")  # a bad override does not hide the help
    assert code == 0 and "(shown without your overrides: unknown model 'nope'" in out


def test_hydra_help_is_still_hydras(cli):
    result = cli("train", "--hydra-help")
    assert result.returncode == 0 and "== Flags ==" in result.stdout and "--multirun" in result.stdout


def test_top_level_help_says_what_alignkit_is(cli_main):
    code, out, _ = cli_main("--help")
    assert code == 0 and out.startswith("alignkit: a plugin registry of LLM alignment methods")


# ---------------------------------------------------------------------------- eval rm on a non-reward model
def fake_model_run(root: Path) -> Path:
    """A run folder whose final/ holds a (causal LM) model but no reward head."""
    (root / "final").mkdir(parents=True)
    (root / "final" / "config.json").write_text("{}")
    return root


def test_eval_rm_on_a_policy_names_the_argument_as_typed(cli_main, tmp_path, monkeypatch, pairs_file):
    monkeypatch.chdir(tmp_path)
    fake_model_run(tmp_path / "runs" / "sft-1")
    code, _, err = cli_main("eval", "rm", "--model", "runs/sft-1", "--data", pairs_file)
    assert code == 2
    assert err.strip() == ("alignkit: error: --model runs/sft-1: not a reward model (no reward_model.json in it, "
                           "in its final/ or in a checkpoint's model/); train one with method=reward_model")
    code, _, err = cli_main("eval", "rm", "--model", "runs/none-such", "--data", pairs_file)
    assert code == 2 and err.strip() == "alignkit: error: --model runs/none-such: no such file or folder"


def test_a_judge_that_is_not_a_reward_model_fails_before_generation(cli_main, tmp_path, monkeypatch, pairs_file):
    monkeypatch.chdir(tmp_path)
    fake_model_run(tmp_path / "runs" / "sft-1")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    code, _, err = cli_main("eval", "winrate", "--policy", "tiny", "--baseline", "tiny", "--prompts", prompts,
                            "--judge", "reward_model:runs/sft-1", "--out", "out")
    assert code == 2 and err.startswith("alignkit: error: --judge reward_model:runs/sft-1: not a reward model")
    assert not (tmp_path / "out" / "outputs").exists(), "no answers generated"


def test_scorer_path_errors_still_name_the_config_key(tmp_path):
    from alignkit.errors import ModelError
    from alignkit.reward_models import resolve_reward_folder

    with pytest.raises(ModelError, match=r"^scorer.path=.*sft-1: not a reward model"):
        resolve_reward_folder(str(fake_model_run(tmp_path / "sft-1")))


# ---------------------------------------------------------------------------- empty answers
def test_chat_says_when_the_answer_is_empty(cli_main, monkeypatch):
    import alignkit.chat

    monkeypatch.setattr(alignkit.chat, "sample_completions",
                        lambda *a, **k: [Completion(tokens=[], content=[], text=" \n", ended=True)])
    code, out, _ = cli_main("chat", "--model", "tiny", "--prompt", "Hi")
    assert code == 0 and out.strip() == "(empty completion: the model ended its turn without any text)"


def test_chat_says_when_the_repetition_guard_stopped_the_answer(cli_main, monkeypatch):
    import alignkit.chat

    seen = {}

    def fake(model, prompts, settings, **kwargs):
        seen["guard"] = settings.repetition_guard
        return [Completion(tokens=[5], content=[5], text="Bake it.", ended=False, repeated=True)]

    monkeypatch.setattr(alignkit.chat, "sample_completions", fake)
    code, out, _ = cli_main("chat", "--model", "tiny", "--prompt", "Hi")
    assert code == 0 and seen["guard"] == 3
    assert out.splitlines() == ["Bake it.", "(stopped: the answer began repeating itself; one copy is shown. "
                                "--repetition-guard 0 lets it run to --max-new-tokens)"]
    code, out, _ = cli_main("chat", "--model", "tiny", "--prompt", "Hi", "--repetition-guard", "0")
    assert code == 0 and seen["guard"] == 0
    code, _, err = cli_main("chat", "--model", "tiny", "--prompt", "Hi", "--repetition-guard", "1")
    assert code == 2 and "--repetition-guard 1" in err


def test_chat_prints_a_nonempty_answer_as_it_is():
    from alignkit.chat import empty_note, shown

    assert shown("Bread needs flour.") == "Bread needs flour."
    assert shown("") == "(empty completion: the model ended its turn without any text)"
    assert empty_note(["a", "b"], "m") is None


def test_generate_says_how_many_answers_are_empty(cli_main, monkeypatch, tmp_path):
    from alignkit.plugins.commands.evaluate import generation

    monkeypatch.setattr(generation, "answers_for", lambda name, prompts, options: (["", "Four.", " "], [None] * 3))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(3)])
    code, out, err = cli_main("generate", "--model", "tiny", "--prompts", prompts, "--out", tmp_path / "a.jsonl")
    assert code == 0, err
    assert "alignkit: 2 of 3 answers of tiny are empty (the model ended its turn without any text)" in out


def test_generate_says_how_many_answers_the_repetition_guard_stopped_and_writes_why(cli_main, monkeypatch, tmp_path):
    from alignkit.plugins.commands.evaluate import generation

    seen = {}

    def fake(name, prompts, options):
        seen["guard"] = options.settings().repetition_guard
        return ["Bake it.", "Four.", "Rain."], ["repetition", "stop", "length"]

    monkeypatch.setattr(generation, "answers_for", fake)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(3)])
    code, out, err = cli_main("generate", "--model", "tiny", "--prompts", prompts, "--out", tmp_path / "a.jsonl")
    assert code == 0, err
    assert seen["guard"] == 3
    assert ("alignkit: 1 of 3 answers of tiny were stopped when they began repeating themselves "
            "(finish_reason=repetition; --repetition-guard 0 lets them run to --max-new-tokens)") in out
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["finish_reason"] for r in rows] == ["repetition", "stop", "length"]


# ---------------------------------------------------------------------------- progress bars with totals
class ListedRollout:
    """An offline rollout: lists its examples (the dataset rollout's shape)."""

    eval_batch_size = 8

    def all_batches(self, split):
        return iter(())

    def num_examples(self, split):
        return 20 if split == "eval" else 100


class SampledRollout:
    """An online rollout: a held-out prompt list and its own eval batch size (the generate rollout's shape)."""

    def __init__(self) -> None:
        self.held_out, self.eval_batch_size = list(range(5)), 2


class CountingRollout:
    def num_eval_batches(self) -> int:
        return 7


def test_eval_batch_count():
    from alignkit.loop import eval_batch_count

    assert eval_batch_count(ListedRollout(), 4) == 3  # 20 examples by its own 8: 8 + 8 + 4
    assert eval_batch_count(SampledRollout(), 4) == 3  # 5 prompts by 2
    assert eval_batch_count(CountingRollout(), 4) == 7
    assert eval_batch_count(object(), 4) is None


def test_training_evaluation_bar_has_a_total(sft_file, tmp_path):
    from alignkit.testing import run_training

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        run_training("method=sft", "data=custom", f"data.path={sft_file}", "data.format=prompt_completion",
                     "data.eval_fraction=0.25", "trainer.eval_batch_size=4", "trainer.max_steps=1",
                     "trainer.progress=true", run_dir=tmp_path / "run")
    # 24 rows, a quarter held out: 6 examples in batches of 4 -> a bar of 2 batches (tqdm: "0/2 [00:00<?, ?batch/s]",
    # the ETA filled in once a batch is done; without a total it read "eval: 0it [00:00, ?it/s]")
    assert re.search(r"eval: +0%\|.*\| 0/2 \[\d\d:\d\d<", stderr.getvalue()), stderr.getvalue()[-2000:]


def test_reward_model_scoring_bar_counts_the_batches_of_every_call():
    from alignkit.reward_models import RewardModelScorer

    scorer = object.__new__(RewardModelScorer)  # only what the bar needs: no model
    scorer.batch_size, scorer._bar = 8, None
    with scorer.progress(24, 5, desc="eval rm"):
        assert scorer._bar.total == 3 + 1
    assert scorer._bar is None
