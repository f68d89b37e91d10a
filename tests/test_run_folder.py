"""One run per folder (issue 16, class 7): a fresh run into a folder that holds a run is refused in one
line (exit 2) and leaves it untouched; ``overwrite=true`` deletes that run's files and starts clean,
but never files no run wrote. Every way a run folder gets written is checked: ``alignkit train``,
``alignkit launch``, multi-stage pipelines and :func:`alignkit.loop.train` (the tests' ``alignkit_run``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from alignkit.metrics import read_metrics
from alignkit.runfolder import RunFolderError
from alignkit.testing import TINY_DEFAULTS


def sft_args(data: Path, steps: int = 2) -> list[str]:
    return [*TINY_DEFAULTS, "method=sft", "data=custom", f"data.path={data}", "data.format=prompt_completion",
            "data.eval_fraction=0.25", "trainer.batch_size=2", f"trainer.max_steps={steps}", "trainer.save_every=1",
            "trainer.optimizer.lr=1e-3"]


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("alignkit: error: ") and "Traceback" not in err, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def train(cli_main, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return lambda *args: cli_main("train", *args)


@pytest.fixture
def first_run(train, sft_file, tmp_path) -> Path:
    run = tmp_path / "run"
    code, _, err = train(*sft_args(sft_file), f"hydra.run.dir={run}")
    assert code == 0, err
    return run


def test_a_fresh_run_into_a_folder_holding_a_run_is_refused_and_touches_nothing(train, first_run, sft_file):
    before = snapshot(first_run)
    code, out, err = train(*sft_args(sft_file, steps=3), f"hydra.run.dir={first_run}")
    line = one_line(err)
    assert code == 2 and f"{first_run} already holds a run" in line
    assert f"resume={first_run}" in line and "overwrite=true" in line
    assert snapshot(first_run) == before, "metrics.jsonl, config.yaml, checkpoints, .hydra/: all as they were"


def test_overwrite_starts_clean(train, first_run, sft_file):
    code, out, err = train(*sft_args(sft_file, steps=3), "trainer.save_every=3", f"hydra.run.dir={first_run}",
                           "overwrite=true")
    assert code == 0, err
    assert f"overwrite=true: removed the earlier run's files from {first_run}" in out
    train_steps = [r["step"] for r in read_metrics(first_run) if r["split"] == "train"]
    assert train_steps == [1, 2, 3], "only the new run's lines"
    assert [p.name for p in (first_run / "checkpoints").iterdir()] == ["step-000003"], "no checkpoint of the old run"


def test_overwrite_never_deletes_files_no_run_wrote(train, first_run, sft_file):
    notes = first_run / "notes.txt"
    notes.write_text("mine")
    before = snapshot(first_run)
    code, out, err = train(*sft_args(sft_file), f"hydra.run.dir={first_run}", "overwrite=true")
    line = one_line(err)
    assert code == 2 and "holds files no alignkit run wrote (notes.txt)" in line and "nothing was deleted" in line
    assert snapshot(first_run) == before


def test_a_failed_fresh_run_removes_only_what_it_wrote(train, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    code, out, err = train(*TINY_DEFAULTS, "method=sft", "data=custom", f"data.path={tmp_path / 'missing.jsonl'}",
                           f"hydra.run.dir={folder}")
    assert code == 2 and "missing.jsonl" in one_line(err)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"], "the user's file stays, the run's files go"


def test_loop_train_refuses_a_folder_holding_a_run(alignkit_run, first_run, sft_file):
    """The entry point under the tests' ``alignkit_run`` fixture and the ``cai pipeline`` command."""
    before = snapshot(first_run)
    with pytest.raises(RunFolderError, match="already holds a run"):
        alignkit_run(*sft_args(sft_file)[len(TINY_DEFAULTS):], run_dir=first_run)
    assert snapshot(first_run) == before


def test_launch_refuses_a_folder_holding_a_run(cli_main, first_run):
    before = snapshot(first_run)
    code, out, err = cli_main("launch", "--nproc", "2", "--print-command", *TINY_DEFAULTS, "method=sft",
                              f"hydra.run.dir={first_run}")
    assert code == 2 and "already holds a run" in one_line(err)
    assert snapshot(first_run) == before


def test_a_fresh_pipeline_into_a_pipeline_folder_is_refused_before_any_stage_trains(train, sft_file, tmp_path):
    stages = "stages=[{name: first, overrides: ['method=sft']}, {name: second, overrides: ['method=sft']}]"
    pipe = tmp_path / "pipe"
    code, _, err = train(stages, *sft_args(sft_file), f"hydra.run.dir={pipe}")
    assert code == 0, err
    before = snapshot(pipe)
    code, out, err = train(stages, *sft_args(sft_file), f"hydra.run.dir={pipe}")
    line = one_line(err)
    assert code == 2 and f"{pipe} already holds a run" in line and "first/" in line
    assert "stage 1/2" not in out
    assert snapshot(pipe) == before


def test_overwrite_never_empties_a_folder_of_other_runs(tmp_path):
    """Run folders under a plain parent (``runs/``) are the user's, not stages of a pipeline to clear."""
    from alignkit.runfolder import claim_fresh

    parent = tmp_path / "runs"
    for name in ("dpo-1", "sft-2"):
        (parent / name).mkdir(parents=True)
        (parent / name / "config.yaml").write_text("method: {name: sft}\n")
        (parent / name / "metrics.jsonl").write_text('{"step": 1}\n')
    before = snapshot(parent)
    claim_fresh(parent)  # it holds no run files of its own: nothing to refuse, nothing touched
    assert snapshot(parent) == before
    (parent / "metrics.jsonl").write_text("")  # now it does
    with pytest.raises(RunFolderError, match=r"holds files no alignkit run wrote \(dpo-1/, sft-2/\)"):
        claim_fresh(parent, overwrite=True)
    assert {k: v for k, v in snapshot(parent).items() if k != "metrics.jsonl"} == before, "nothing deleted"
