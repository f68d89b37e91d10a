"""``resume=<run>`` continues the run from its own saved config (issue 16, class 8).

A custom-data SFT run (2 steps, a checkpoint per step) is cut back to its first checkpoint, as a kill
after step 1 would leave it, and resumed with nothing but ``resume=<run>``: it must train on the same
data with the same schedule and end bit-identical to the run that never stopped, leaving
``config.yaml`` as it was. Overrides on top are printed; those that change what the steps compute
are refused unless ``resume_force=true``. The same holds for ``alignkit launch`` (its workers) and
for a multi-stage pipeline folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from alignkit.metrics import read_metrics
from alignkit.testing import TINY_DEFAULTS


def sft_args(data: Path) -> list[str]:
    return [*TINY_DEFAULTS, "method=sft", "data=custom", f"data.path={data}", "data.format=prompt_completion",
            "data.eval_fraction=0.25", "trainer.batch_size=2", "trainer.max_steps=2", "trainer.save_every=1",
            "trainer.keep_last=4", "trainer.optimizer.lr=1e-3"]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def log(run: Path) -> list[dict]:
    from alignkit.metrics import is_wall_time

    return [{k: v for k, v in r.items() if not is_wall_time(k)} for r in read_metrics(run)]


def cut_to_first_checkpoint(run: Path, cut: Path) -> Path:
    """A copy of ``run`` as a kill right after checkpoint 1 leaves it (later lines of metrics.jsonl stay)."""
    shutil.copytree(run, cut)
    shutil.rmtree(cut / "checkpoints" / "step-000002")
    shutil.rmtree(cut / "final")
    return cut


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("alignkit: error: ") and "Traceback" not in err, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def straight(cli_main, sft_file, tmp_path, monkeypatch) -> Path:
    """The uninterrupted run: 2 steps, a checkpoint after each."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "straight"
    code, out, err = cli_main("train", *sft_args(sft_file), f"hydra.run.dir={run}")
    assert code == 0, err
    return run


def test_resume_with_only_the_folder_trains_on_the_runs_data_and_schedule(cli_main, straight, tmp_path):
    cut = cut_to_first_checkpoint(straight, tmp_path / "cut")
    config = (cut / "config.yaml").read_bytes()
    code, out, err = cli_main("train", f"resume={cut}")
    assert code == 0, err
    assert "resumed from" in out and "step-000001 at step 1" in out
    assert "resume: " not in out, "nothing changed, nothing to report"
    assert_same_weights(straight, cut)
    assert log(cut) == log(straight)
    assert (cut / "config.yaml").read_bytes() == config, "config.yaml is the run's, untouched"
    assert not list(cut.glob("config.resume-*.yaml")) and not (cut / "resumes.jsonl").exists()


def test_a_resume_that_restates_the_command_line_leaves_the_config_alone(cli_main, straight, sft_file, tmp_path):
    """Scripts that repeat their whole ``alignkit train`` line plus ``resume=`` keep working."""
    cut = cut_to_first_checkpoint(straight, tmp_path / "cut")
    config = (cut / "config.yaml").read_bytes()
    code, out, err = cli_main("train", *sft_args(sft_file), f"resume={cut}")
    assert code == 0, err
    assert_same_weights(straight, cut)
    assert (cut / "config.yaml").read_bytes() == config


def test_a_new_max_steps_is_printed_recorded_and_trained(cli_main, straight, tmp_path):
    before = (straight / "config.yaml").read_text()
    code, out, err = cli_main("train", f"resume={straight}", "trainer.max_steps=4")
    assert code == 0, err
    changes = [line for line in out.splitlines() if line.startswith("resume: ")]
    assert len(changes) == 1 and changes[0].startswith("resume: trainer.max_steps 2 -> 4"), out
    assert "finished 4 steps" in out
    assert [r["step"] for r in read_metrics(straight) if r["split"] == "train"] == [1, 2, 3, 4]
    # The new config is the run's config now; the previous one is kept, and the change logged.
    assert OmegaConf.load(straight / "config.yaml").trainer.max_steps == 4
    assert (straight / "config.resume-1.yaml").read_text() == before
    record = json.loads((straight / "resumes.jsonl").read_text())
    assert record["changes"] == {"trainer.max_steps": [2, 4]} and record["forced"] is False


def test_a_data_change_is_refused_unless_forced(cli_main, straight, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"prompt": f"Spell {i}.", "completion": f"{i}!"}) + "\n" for i in range(24)))
    before = snapshot(straight)
    code, out, err = cli_main("train", f"resume={straight}", f"data.path={other}", "trainer.max_steps=3")
    line = one_line(err)
    assert code == 2 and f"data.path {straight.parent / 'sft.jsonl'} -> {other}" in line and "resume_force=true" in line
    assert snapshot(straight) == before, "a refused resume writes nothing"

    code, out, err = cli_main("train", f"resume={straight}", f"data.path={other}", "trainer.max_steps=3",
                              "resume_force=true")
    assert code == 0, err
    assert f"resume: data.path {straight.parent / 'sft.jsonl'} -> {other}" in out and "finished 3 steps" in out
    assert OmegaConf.load(straight / "config.yaml").data.path == str(other)
    assert json.loads((straight / "resumes.jsonl").read_text())["forced"] is True


def test_a_forced_resume_that_cannot_start_leaves_the_config_as_it_was(cli_main, straight, tmp_path):
    before = snapshot(straight)
    code, out, err = cli_main("train", f"resume={straight}", f"data.path={tmp_path / 'typo.jsonl'}",
                              "resume_force=true")
    assert code == 2 and "typo.jsonl" in one_line(err)
    assert snapshot(straight) == before


def test_group_selections_do_not_recompose_a_resumed_run(cli_main, straight):
    before = snapshot(straight)
    code, out, err = cli_main("train", f"resume={straight}", "data=custom")
    line = one_line(err)
    assert code == 2 and "data=custom would recompose the run's config" in line and "key=value" in line
    code, out, err = cli_main("train", f"resume={straight}", "hydra.job.chdir=true")
    assert code == 2 and "Hydra options have no effect on a resumed run" in one_line(err)
    assert snapshot(straight) == before


def test_launch_resumes_from_the_saved_config_and_its_worker_continues_exactly(cli_main, straight, tmp_path):
    from alignkit.worker import main as worker

    cut = cut_to_first_checkpoint(straight, tmp_path / "cut")
    config = (cut / "config.yaml").read_bytes()
    code, out, err = cli_main("launch", "--nproc", "2", "--print-command", f"resume={cut}")
    assert code == 0, err
    assert f"-m alignkit.worker {cut} --resume" in out
    assert (cut / "config.yaml").read_bytes() == config
    # What each launched process runs, here as the only process.
    assert worker([str(cut), "--resume"]) == 0
    assert_same_weights(straight, cut)
    assert log(cut) == log(straight)

    # A change is printed and left pending for the workers; config.yaml changes once they have built the run.
    code, out, err = cli_main("launch", "--nproc", "2", "--print-command", f"resume={cut}", "trainer.max_steps=3")
    assert code == 0 and "resume: trainer.max_steps 2 -> 3" in out, err
    assert OmegaConf.load(cut / "config.yaml").trainer.max_steps == 2
    assert worker([str(cut), "--resume"]) == 0
    assert OmegaConf.load(cut / "config.yaml").trainer.max_steps == 3 and (cut / "config.resume-1.yaml").exists()
    assert [r["step"] for r in read_metrics(cut) if r["split"] == "train"] == [1, 2, 3]


def test_a_pipeline_resumes_from_its_folder_alone(cli_main, sft_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stages = ("stages=[{name: first, overrides: ['method=sft']}, "
              "{name: second, overrides: ['method=sft'], model_from: first}]")
    pipe = tmp_path / "pipe"
    code, out, err = cli_main("train", stages, *sft_args(sft_file), f"hydra.run.dir={pipe}")
    assert code == 0, err
    uninterrupted = tmp_path / "second-uninterrupted"
    shutil.copytree(pipe / "second", uninterrupted)
    shutil.rmtree(pipe / "second" / "checkpoints" / "step-000002")
    shutil.rmtree(pipe / "second" / "final")

    code, out, err = cli_main("train", f"resume={pipe}")
    assert code == 0, err
    assert "stage 1/2 first: finished earlier" in out and "resumed from" in out
    assert_same_weights(uninterrupted, pipe / "second")
    assert log(pipe / "second") == log(uninterrupted)


def test_a_plus_override_the_run_started_with_is_a_plain_change_on_resume(tmp_path):
    """``+key=v`` adds a free-form key to a fresh run (``+scorer.kwargs.max_words=8``,
    ``+rollout.engine_options.kv_cache_gib=1``); restated on a resume, whose saved config has the key, it
    is a plain ``key=v`` (Hydra would refuse to add it twice)."""
    from alignkit.compose import compose
    from alignkit.runfolder import CONFIG, resume_config

    started = [*TINY_DEFAULTS, "method=reinforce", "scorer=function",
               "scorer.fn=alignkit.plugins.scorers.rewards:brevity", "+scorer.kwargs.max_words=8"]
    (tmp_path / CONFIG).write_text(OmegaConf.to_yaml(compose(started)))
    assert resume_config(tmp_path, ["+scorer.kwargs.max_words=8"]).scorer.kwargs.max_words == 8
    assert resume_config(tmp_path, ["+scorer.kwargs.max_words=5"]).scorer.kwargs.max_words == 5
    assert resume_config(tmp_path, ["+scorer.kwargs.min_words=2"]).scorer.kwargs.min_words == 2  # still adds
    # the whole command line restated, + key included, as a script repeating its train line does
    again = resume_config(tmp_path, started)
    assert again.scorer.kwargs.max_words == 8
