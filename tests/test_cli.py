"""The ``alignkit`` command line, run as users run it (a subprocess)."""

from __future__ import annotations

import json

import pytest

from conftest import write_jsonl

TINY = ["model=tiny", "trainer.progress=false", "trainer.tensorboard=false"]


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result
    assert lines[0].startswith("alignkit: error: "), result
    assert "Traceback" not in result.stderr
    return lines[0]


def test_plugins_lists_builtins_as_json(cli):
    result = cli("plugins")
    assert result.returncode == 0, result
    report = json.loads(result.stdout)
    by_name = {p["name"]: p for p in report["plugins"]}
    assert by_name["alignkit.plugins.sft"]["registered"]["methods"] == ["sft"]
    assert by_name["alignkit.plugins.sft"]["version"] == "0.1.0"
    assert report["failures"] == []


def test_ls_methods_and_losses_are_tables(cli):
    result = cli("ls", "methods")
    assert result.returncode == 0, result
    header, *rows = result.stdout.splitlines()
    assert header.split()[:4] == ["name", "plugin", "version", "summary"]
    assert any(row.startswith("sft ") and "alignkit.plugins.sft" in row for row in rows)
    assert "plackett_luce" in cli("ls", "losses").stdout


def test_train_tiny_two_steps_writes_a_loadable_model(cli, tmp_path, sft_file):
    result = cli("train", *TINY, "data=custom", f"data.path={sft_file}", "data.format=prompt_completion",
                 "trainer.max_steps=2", "trainer.save_every=2", "hydra.run.dir=out")
    assert result.returncode == 0, result
    assert "held-out before:" in result.stdout and "held-out after:" in result.stdout
    run = tmp_path / "out"
    assert (run / "final" / "model.safetensors").exists() and (run / "checkpoints" / "step-000002" / "manifest.json").exists()
    assert json.loads((run / "plugins.json").read_text())["failures"] == []
    chat = cli("chat", "--model", str(run), "--prompt", "Hello", "--max-new-tokens", "4")
    assert chat.returncode == 0, chat


def test_train_default_hh_data_on_tiny(cli, tmp_path):
    result = cli("train", *TINY, "trainer.max_steps=1", "trainer.batch_size=2", "data.max_examples=16",
                 "data.eval_examples=4", "hydra.run.dir=hh")
    assert result.returncode == 0, result
    summary = json.loads((tmp_path / "hh" / "summary.json").read_text())
    assert summary["eval_before"]["examples"] == 4.0


def test_hydra_flags_pass_through(cli):
    result = cli("train", "--cfg", "job", "method=sft", "model=tiny")
    assert result.returncode == 0, result
    assert "method:" in result.stdout and "name: sft" in result.stdout
    assert "== Flags ==" in cli("train", "--hydra-help").stdout  # --help is alignkit's (tests/test_help_that_helps.py)


@pytest.mark.parametrize("args, expected", [
    (["method=nope"], "unknown method 'nope' (method=nope); available: "),
    (["trainer.max_stepz=3"], "unknown config key 'trainer.max_stepz'"),
    (["trainer.max_steps=abc"], "config key trainer.max_steps: Value 'abc'"),
    (["data.path=missing.jsonl"], "data.path=missing.jsonl: no such file or folder"),
    (["model.path=/nowhere"], "model.path=/nowhere: no such folder"),
    (["data.format=nope"], "unknown data format 'nope' (data.format)"),
    (["trainer.optimizer._target_=torch.optim.Nope"], "trainer.optimizer: cannot build torch.optim.Nope"),
])
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, args, expected):
    result = cli("train", *TINY, *args, "hydra.run.dir=bad")
    assert result.returncode == 2, result
    assert expected in one_error_line(result)
    assert not (tmp_path / "bad").exists(), "nothing half-written"


def test_malformed_jsonl_names_its_line(cli, tmp_path):
    path = write_jsonl(tmp_path / "broken.jsonl", ['{"prompt": "a", "completion": "b"}', '{"prompt": "a", '])
    result = cli("train", *TINY, "data=custom", f"data.path={path}", "data.format=prompt_completion", "hydra.run.dir=bad")
    assert result.returncode == 2, result
    assert f"{path}:2: malformed JSON line" in one_error_line(result)


def test_unknown_command(cli):
    result = cli("frobnicate")
    assert result.returncode == 2 and "unknown command 'frobnicate'" in one_error_line(result)


def test_multirun_sweep_passes_through(cli, tmp_path, sft_file):
    result = cli("train", "-m", *TINY, "data=custom", f"data.path={sft_file}", "data.format=prompt_completion",
                 "trainer.max_steps=1,2", "hydra.sweep.dir=sweep")
    assert result.returncode == 0, result
    steps = [json.loads((tmp_path / "sweep" / str(i) / "summary.json").read_text())["steps"] for i in (0, 1)]
    assert steps == [1, 2]
