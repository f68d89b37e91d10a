"""Multi-stage experiments (``stages``): order, chaining, resume, and errors before any training."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from alignkit.errors import ConfigError
from alignkit.metrics import read_metrics
from alignkit.stages import Stage, parse_stages, stage_overrides
from alignkit.testing import TINY_DEFAULTS


def test_parse_stages_reads_every_field():
    stages = parse_stages([{"name": "sl", "overrides": ["method=sft"]},
                           {"name": "rl", "overrides": ["method=dpo"], "model_from": "sl"}])
    assert stages == [Stage("sl", ("method=sft",)), Stage("rl", ("method=dpo",), "sl")]


@pytest.mark.parametrize("entries, message", [
    ([{"name": "a"}, {"name": "a"}], r"stages\[1\].name: 'a' is used by an earlier stage"),
    ([{"name": "b", "model_from": "a"}], r"stages\[0\].model_from: no earlier stage named 'a' \(earlier: none\)"),
    ([{"name": "a/b"}], r"stages\[0\].name: expected a folder name"),
    ([{"name": "a", "steps": 3}], r"stages\[0\]: unknown key 'steps'"),
    ([{"name": "a", "overrides": "method=sft"}], r"stages\[0\].overrides: expected a list"),
    ({"name": "a"}, r"stages: expected a list"),
])
def test_bad_stages_name_the_entry(entries, message):
    with pytest.raises(ConfigError, match=message):
        parse_stages(entries)


def test_stage_overrides_put_the_command_line_after_the_stage_and_chain_the_model(tmp_path):
    stage = Stage("rl", ("experiment=cai_rl", "trainer.max_steps=10"), "sl")
    argv = ["experiment=cai", "trainer.max_steps=3", f"hydra.run.dir={tmp_path}", f"resume={tmp_path}", "model=tiny"]
    assert stage_overrides(stage, argv, tmp_path) == [
        "experiment=cai_rl", "trainer.max_steps=10", "trainer.max_steps=3", "model=tiny",
        f"model.path={tmp_path / 'sl' / 'final'}"]


@pytest.fixture
def run_train(tmp_path, monkeypatch, cli_main):
    monkeypatch.chdir(tmp_path)
    return lambda *args: cli_main("train", *TINY_DEFAULTS, *args)


def two_sft_stages(sft_file: Path, second: str = "method=sft") -> list[str]:
    data = f"data=custom data.path={sft_file} data.format=prompt_completion data.eval_fraction=0.25"
    return ["stages=[{name: first, overrides: ['method=sft']}, "
            f"{{name: second, overrides: ['{second}'], model_from: first}}]",
            *data.split(), "trainer.batch_size=2", "trainer.optimizer.lr=1e-3", "trainer.max_steps=2"]


def test_two_stages_train_in_order_and_the_second_starts_from_the_first(run_train, sft_file, tmp_path):
    code, out, err = run_train(*two_sft_stages(sft_file), f"hydra.run.dir={tmp_path / 'pipe'}")
    assert code == 0, err
    first, second = tmp_path / "pipe" / "first", tmp_path / "pipe" / "second"
    assert "stage 1/2 first" in out and "stage 2/2 second" in out
    assert (first / "final").is_dir() and (second / "final").is_dir()
    # The second run's model is the first run's final model: its held-out NLL before training is the
    # first run's after training (same held-out rows), and it trains on from there.
    after_first = [r for r in read_metrics(first) if r["split"] == "eval"][-1]
    before_second = [r for r in read_metrics(second) if r["split"] == "eval"][0]
    assert before_second["step"] == 0 and before_second["nll"] == pytest.approx(after_first["nll"], abs=1e-5)
    assert f"model.path={first / 'final'}" in out

    # resume= skips the finished stage and trains the one that did not finish.
    shutil.rmtree(second)
    code, out, err = run_train(*two_sft_stages(sft_file), f"resume={tmp_path / 'pipe'}")
    assert code == 0, err
    assert "stage 1/2 first: finished earlier" in out and (second / "final").is_dir()


def test_an_error_in_a_later_stage_stops_before_anything_trains(run_train, sft_file, tmp_path):
    code, out, err = run_train(*two_sft_stages(sft_file, second="method=nope"), f"hydra.run.dir={tmp_path / 'pipe'}")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "unknown method 'nope'" in lines[0], err
    assert not (tmp_path / "pipe").exists()


def test_a_first_stage_that_fails_leaves_no_pipeline_folder(run_train, tmp_path):
    stages = "stages=[{name: a, overrides: ['method=sft', 'data=custom', 'data.path=missing.jsonl']}]"
    code, out, err = run_train(stages, f"hydra.run.dir={tmp_path / 'pipe'}")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "missing.jsonl" in lines[0], err
    assert not (tmp_path / "pipe").exists()


def test_hydra_multirun_of_a_pipeline_is_refused_in_one_line(cli):
    result = cli("train", "experiment=cai", "model=tiny", "-m")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and lines == [
        "alignkit: error: a multi-stage experiment (stages) runs without Hydra's flags: drop -m / --multirun"], result
