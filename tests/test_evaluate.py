"""``alignkit eval | generate | plot | chat`` on a tiny trained run, trackers, progress bars, and
run outputs loading directly in transformers."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import sys
import types

import pytest
import torch

from alignkit.cli import main as cli_main
from alignkit.errors import ConfigError
from alignkit.plugins.commands.evaluate.winrate import win_rate_summary
from alignkit.stats import wilson_interval
from conftest import write_jsonl


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 4-step reward-model run on model=tiny with TensorBoard (the default tracker) and a progress bar."""
    from alignkit.testing import run_training

    root = tmp_path_factory.mktemp("evaluate")
    rows = [{"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f"It is {2 * i}.",
             "rejected": f"I will not answer {i}."} for i in range(24)]
    pairs = write_jsonl(root / "pairs.jsonl", rows)
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": r["prompt"]} for r in rows[:4]])
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        result = run_training("method=reward_model", "data=custom", f"data.path={pairs}", "data.format=pairwise",
                              "data.eval_fraction=0.25", "trainer.batch_size=3", "trainer.max_steps=4",
                              "trainer.eval_every=2", "trainer.save_every=2", "trainer.optimizer.lr=1e-3",
                              "trainer.progress=true", "trainer.tensorboard=true", run_dir=root / "run")
    return types.SimpleNamespace(root=root, run=result.run_dir, final=result.final_model, pairs=pairs,
                                 prompts=prompts, stderr=stderr.getvalue())


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli_main([*map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and "it/s" not in line and "batch/s" not in line]
    assert len(lines) == 1 and lines[0].startswith("alignkit: error: "), err
    return lines[0]


# ---------------------------------------------------------------------------- comforts of training
def test_progress_bar_shows_rate_and_eta(tiny_run):
    # tqdm: "reward_model: 50%|...| 2/4 [00:01<00:01,  1.02s/step, loss=0.63]" (elapsed<ETA, rate).
    assert re.search(r"reward_model: +\d+%.*\d/4 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(s/step|step/s), loss=", tiny_run.stderr)


def test_tensorboard_is_on_by_default_and_mirrors_metrics_jsonl(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_run.run / "tensorboard")).Reload()
    assert {"train/loss", "train/lr", "eval/accuracy"} <= set(events.Tags()["scalars"])
    logged = [json.loads(line) for line in (tiny_run.run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logged if r["split"] == "train"]
    scalars = events.Scalars("train/loss")
    assert [s.step for s in scalars] == [r["step"] for r in train]
    assert [s.value for s in scalars] == pytest.approx([r["loss"] for r in train], abs=1e-6)


def test_trackers_config_fails_early_for_missing_or_unknown_trackers(monkeypatch):
    import accelerate.tracking

    from alignkit.compose import compose, validate

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: ["tensorboard"])  # as without wandb
    with pytest.raises(ConfigError, match=r"trainer.trackers: wandb is not installed; pip install wandb"):
        validate(compose(["model=tiny", "trainer.trackers=[tensorboard,wandb]"]))
    with pytest.raises(ConfigError, match=r"unknown tracker 'tensorbored'; available: .*tensorboard"):
        validate(compose(["model=tiny", "trainer.trackers=[tensorbored]"]))
    validate(compose(["model=tiny", "trainer.trackers=[]"]))


def test_wandb_tracker_gets_config_and_every_metric(tmp_path, monkeypatch):
    import accelerate.tracking

    from alignkit.metrics import MetricsLogger

    calls: dict[str, list] = {"init": [], "log": [], "config": [], "finish": []}

    class FakeRun:
        def log(self, values, step=None, **kwargs):
            calls["log"].append((values, step))

        def finish(self):
            calls["finish"].append(True)

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls["init"].append(kwargs) or FakeRun()
    fake.config = types.SimpleNamespace(update=lambda values, allow_val_change=False: calls["config"].append(values))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: ["tensorboard", "wandb"])
    (tmp_path / "run-7").mkdir()
    logger = MetricsLogger(tmp_path / "run-7", trackers=["wandb"], project="proj", config={"trainer": {"lr": 0.1}},
                           tracker_kwargs={"wandb": {"mode": "offline"}})
    logger.log(3, {"loss": torch.tensor(0.5)})
    logger.close()
    assert calls["init"] == [{"project": "proj", "name": "run-7", "dir": str(tmp_path / "run-7"), "mode": "offline"}]
    assert calls["config"] == [{"trainer.lr": 0.1}]
    assert calls["log"] == [({"train/loss": 0.5}, 3)] and calls["finish"] == [True]
    assert json.loads((tmp_path / "run-7" / "metrics.jsonl").read_text()) == {"step": 3, "split": "train", "loss": 0.5}


# ---------------------------------------------------------------------------- outputs load in transformers
def test_final_model_and_checkpoint_load_in_transformers_and_generate(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = tiny_run.run / "checkpoints" / "step-000004" / "model"
    for folder in (tiny_run.final, checkpoint):
        model = AutoModelForCausalLM.from_pretrained(str(folder))
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert out.shape[1] == ids["input_ids"].shape[1] + 3
    final = AutoModelForCausalLM.from_pretrained(str(tiny_run.final))
    saved = AutoModelForCausalLM.from_pretrained(str(checkpoint))
    for (name, a), b in zip(final.state_dict().items(), saved.state_dict().values()):
        assert torch.equal(a, b), name  # the last checkpoint (step 4) holds the final weights


def test_chat_and_generate_on_a_checkpoint(tiny_run, capsys, tmp_path):
    checkpoint = tiny_run.run / "checkpoints" / "step-000002"
    code, out, _ = run_cli(capsys, "chat", "--model", checkpoint, "--prompt", "Hello", "--max-new-tokens", "3")
    assert code == 0
    target = tmp_path / "answers.jsonl"
    code, out, _ = run_cli(capsys, "generate", "--model", tiny_run.run, "--prompts", tiny_run.prompts, "--out", target,
                           "--sample", "--max-new-tokens", "5")
    assert code == 0 and "4 answers" in out
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [f"Question {i}: what is {i} plus {i}?" for i in range(4)]
    assert all(isinstance(r["completion"], str) and r["model"] == str(tiny_run.run) for r in rows)


# ---------------------------------------------------------------------------- eval
def test_eval_rm_reports_accuracy_with_wilson_interval(tiny_run, capsys, tmp_path):
    code, out, _ = run_cli(capsys, "eval", "rm", "--model", tiny_run.run, "--data", tiny_run.pairs, "--out", tmp_path)
    assert code == 0 and "accuracy" in out and "(Wilson)" in out
    result = json.loads((tmp_path / "results.json").read_text())
    scores = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert result["pairs"] == 24 == len(scores)
    wins = sum((s["margin"] > 0) + 0.5 * (s["margin"] == 0) for s in scores)
    assert result["accuracy"] == pytest.approx(wins / 24)
    assert (result["accuracy_ci_low"], result["accuracy_ci_high"]) == pytest.approx(wilson_interval(wins, 24))
    assert result["margin"] == pytest.approx(sum(s["margin"] for s in scores) / 24, abs=1e-6)


def test_eval_winrate_with_a_reward_model_judge_and_reused_outputs(tiny_run, capsys, tmp_path):
    first = tmp_path / "first"
    code, out, _ = run_cli(capsys, "eval", "winrate", "--policy", tiny_run.final, "--baseline", "tiny", "--prompts",
                           tiny_run.prompts, "--judge", f"reward_model:{tiny_run.run}", "--sample", "--max-new-tokens", "6",
                           "--rounds", "50", "--out", first)
    assert code == 0 and "LC win-rate" in out
    result = json.loads((first / "results.json").read_text())
    rows = [json.loads(line) for line in (first / "judgments.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and result["n"] == 4
    again = win_rate_summary([r["preference"] for r in rows], [r["length_a"] - r["length_b"] for r in rows],
                             rounds=50, seed=0)
    for key in ("win_rate", "win_rate_ci_low", "win_rate_ci_high", "lc_win_rate", "lc_win_rate_ci_low"):
        assert result[key] == pytest.approx(again[key], abs=1e-12), key
    # The saved answers stand in for the models: same judgments without generating again.
    outputs = sorted((first / "outputs").glob("*.jsonl"))
    policy = next(p for p in outputs if p.name != "tiny.jsonl")
    code, _, _ = run_cli(capsys, "eval", "winrate", "--policy", policy, "--baseline", first / "outputs" / "tiny.jsonl",
                         "--prompts", tiny_run.prompts, "--judge", f"reward_model:{tiny_run.run}", "--rounds", "50",
                         "--out", tmp_path / "second")
    assert code == 0
    rerun = json.loads((tmp_path / "second" / "results.json").read_text())
    assert rerun["win_rate"] == result["win_rate"] and rerun["lc_win_rate"] == result["lc_win_rate"]
    # Answer rows whose prompt is a message list (as CAI's files hold them) are matched the same way.
    as_messages = tmp_path / "messages.jsonl"
    write_jsonl(as_messages, [{**row, "prompt": [{"role": "user", "content": row["prompt"]}]}
                              for row in map(json.loads, policy.read_text().splitlines())])
    code, _, err = run_cli(capsys, "eval", "winrate", "--policy", as_messages, "--baseline", first / "outputs" / "tiny.jsonl",
                           "--prompts", tiny_run.prompts, "--judge", f"reward_model:{tiny_run.run}", "--rounds", "50",
                           "--out", tmp_path / "third")
    assert code == 0, err
    assert json.loads((tmp_path / "third" / "results.json").read_text())["win_rate"] == result["win_rate"]


def test_eval_winrate_with_an_llm_judge_reads_both_orders(tiny_run, capsys, tmp_path):
    code, out, _ = run_cli(capsys, "eval", "winrate", "--policy", tiny_run.final, "--baseline", "tiny", "--prompts",
                           tiny_run.prompts, "--judge", "judge:tiny", "--n", "2", "--sample", "--max-new-tokens", "4",
                           "--rounds", "20", "--out", tmp_path)
    assert code == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["n"] == 2 and 0 <= result["win_rate"] <= 1 and result["judge_kind"] == "judge"
    assert 0 < result["judge_answer_mass"] <= 1 and 0 <= result["position_agreement"] <= 1
    rows = [json.loads(line) for line in (tmp_path / "judgments.jsonl").read_text().splitlines()]
    for row in rows:  # the reported preference is the mean of the two presentation orders
        assert row["preference"] == pytest.approx(0.5 * (row["preference_policy_first"] + row["preference_policy_second"]))


def test_conversation_prompts_are_shown_to_the_judge_whole():
    from alignkit.plugins.commands.evaluate.judges import conversation_text

    assert conversation_text([{"role": "user", "content": "Hi?"}]) == "Hi?"
    assert conversation_text([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                              {"role": "user", "content": "Bye?"}]) == "User: Hi\nAssistant: Hello\nUser: Bye?"


def test_eval_elo_from_models_and_from_a_judgments_file(tiny_run, capsys, tmp_path):
    code, out, _ = run_cli(capsys, "eval", "elo", "--models", "tiny", tiny_run.final, tiny_run.run / "checkpoints" / "step-000002",
                           "--prompts", tiny_run.prompts, "--judge", f"reward_model:{tiny_run.run}", "--sample",
                           "--max-new-tokens", "6", "--rounds", "50", "--out", tmp_path / "models")
    assert code == 0 and "rating" in out
    result = json.loads((tmp_path / "models" / "results.json").read_text())
    assert result["games"] == 3 * 4 and len(result["ratings"]) == 3
    assert (tmp_path / "models" / "elo.png").read_bytes()[:4] == b"\x89PNG"
    assert sum(r["rating"] for r in result["ratings"]) / 3 == pytest.approx(1000.0, abs=1e-6)
    # Chatbot-Arena rows: A beats B three times in four → 400·log10(3) apart.
    games = write_jsonl(tmp_path / "games.jsonl", [{"model_a": "A", "model_b": "B", "winner": w}
                                                    for w in ("model_a", "model_a", "model_b", "model_a")])
    code, out, _ = run_cli(capsys, "eval", "elo", "--judgments", games, "--l2", "0", "--anchor", "B", "--rounds", "20",
                           "--out", tmp_path / "arena")
    assert code == 0
    table = {r["model"]: r["rating"] for r in json.loads((tmp_path / "arena" / "results.json").read_text())["ratings"]}
    assert table["B"] == pytest.approx(1000.0) and table["A"] == pytest.approx(1000 + 400 * math.log10(3), abs=1e-5)


def test_eval_errors_are_one_line(tiny_run, capsys, tmp_path):
    code, _, err = run_cli(capsys, "eval", "winrate", "--policy", "tiny", "--baseline", "tiny", "--prompts",
                           tiny_run.prompts, "--judge", "gpt4", "--out", tmp_path)
    assert code == 2 and "--judge 'gpt4': expected reward_model:" in one_error(err)
    code, _, err = run_cli(capsys, "eval", "rm", "--model", tmp_path / "nope", "--data", tiny_run.pairs)
    assert code == 2 and f"--model {tmp_path / 'nope'}: no such file or folder" in one_error(err)
    code, _, err = run_cli(capsys, "eval", "rm", "--model", tmp_path, "--data", tiny_run.pairs)
    assert code == 2 and f"--model {tmp_path}: not a reward model (no reward_model.json" in one_error(err)
    code, _, err = run_cli(capsys, "eval", "elo", "--out", tmp_path)
    assert code == 2 and "either --models" in one_error(err)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"model_a": "A", "model_b": "B", "winner": "C"}])
    code, _, err = run_cli(capsys, "eval", "elo", "--judgments", bad, "--out", tmp_path)
    assert code == 2 and "bad.jsonl:1" in one_error(err)


# ---------------------------------------------------------------------------- plot
def test_plot_writes_one_png_per_family_and_a_grid(tiny_run, capsys, tmp_path):
    code, out, _ = run_cli(capsys, "plot", tiny_run.run, "--out", tmp_path)
    assert code == 0 and f"to {tmp_path}" in out
    names = {p.name for p in tmp_path.glob("*.png")}
    assert {"loss.png", "accuracy.png", "margin.png", "lr.png", "grad_norm.png", "curves.png"} <= names
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in tmp_path.glob("*.png"))


def test_plot_of_online_metrics_and_a_folder_without_metrics(capsys, tmp_path):
    run = tmp_path / "ppo"
    run.mkdir()
    lines = [{"step": s, "split": "train", "loss": 1.0 / s, "kl": 0.01 * s, "reward": 0.1 * s, "lr": 1e-5,
              "entropy": 2.0, "elapsed_s": s} for s in range(1, 6)]
    lines.append({"step": 5, "split": "eval", "reward": 0.6, "reward_ci_low": 0.5, "reward_ci_high": 0.7, "kl": 0.05})
    write_jsonl(run / "metrics.jsonl", lines)
    code, _, _ = run_cli(capsys, "plot", run)
    assert code == 0
    assert {p.name for p in (run / "plots").glob("*.png")} == {"loss.png", "reward.png", "kl.png", "lr.png",
                                                                "entropy.png", "curves.png"}
    code, _, err = run_cli(capsys, "plot", tmp_path)
    assert code == 2 and "no metrics.jsonl here" in one_error(err)


def test_plot_compares_runs_metric_by_metric(capsys, tmp_path):
    runs = []
    for name, slope in (("grpo", 0.1), ("gspo", 0.2)):
        run = tmp_path / name
        run.mkdir()
        lines = [{"step": s, "split": "train", "score": slope * s, "clip_frac": 0.01 * s, "lr": 1e-5} for s in range(1, 5)]
        lines.append({"step": 4, "split": "eval", "accuracy": 0.4, "accuracy_ci_low": 0.3, "accuracy_ci_high": 0.5})
        write_jsonl(run / "metrics.jsonl", lines)
        runs.append(run)
    code, out, _ = run_cli(capsys, "plot", *runs, "--metrics", "accuracy,score", "--labels", "a,b", "--out", tmp_path)
    assert code == 0 and (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG" and "compare.png" in out
    import matplotlib.pyplot as plt

    from alignkit.plugins.commands.plot import curves

    figures = []
    real_close = plt.close
    plt.close = lambda fig=None: figures.append(fig)  # keep the figure to read its panels
    try:
        curves.plot_compare(runs, tmp_path, metrics=["score", "clip_frac"], labels=["a", "b"])
    finally:
        plt.close = real_close
    score_panel = figures[-1].axes[0]
    assert score_panel.get_title() == "score" and [t.get_text() for t in score_panel.get_legend().get_texts()] == ["a", "b"]
    real_close(figures[-1])
    code, _, err = run_cli(capsys, "plot", *runs, "--metrics", "nope")
    assert code == 2 and "no run logged nope" in one_error(err)
    code, _, err = run_cli(capsys, "plot", *runs, "--labels", "only-one")
    assert code == 2 and "1 labels for 2 runs" in one_error(err)


def test_ema_is_bias_corrected():
    from alignkit.plugins.commands.plot.curves import collect, ema

    assert ema([2.0, 2.0, 2.0], 0.5) == pytest.approx([2.0, 2.0, 2.0])
    assert ema([0.0, 1.0], 0.5) == pytest.approx([0.0, 2 / 3])
    series = collect([{"step": 1, "split": "eval", "accuracy": 0.5, "accuracy_ci_low": 0.4, "accuracy_ci_high": 0.6,
                       "pairs": 10}])
    assert list(series) == [("eval", "accuracy")] and series[("eval", "accuracy")].low == [0.4]
