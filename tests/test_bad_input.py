"""The bad-input matrix: every mistake a user can make gets one line naming what and where.

Each case runs ``alignkit train`` through the real entry point (in-process, for speed; tests/test_cli.py
runs the same path as a subprocess) and checks: exit code 2, exactly one stderr line
``alignkit: error: ...`` containing the expected text (the file:line, row, config key or plugin
name), no traceback, and nothing half-written (a fresh run that failed leaves no folder; a run that
failed after checkpointing keeps its intact checkpoints and no temporary folders).
"""

from __future__ import annotations

import errno
import json
import shutil
import sys
from pathlib import Path

import pytest

from alignkit.models import BUNDLED_TOKENIZER

# A warning would be a second stderr line in a real run: none may be raised on these paths.
pytestmark = pytest.mark.filterwarnings("error")

TINY = ["model=tiny", "trainer.progress=false", "trainer.tensorboard=false", "trainer.batch_size=2",
        "trainer.max_steps=2", "data=custom", "data.eval_fraction=0.25"]

PAIR = {"prompt": "What is 2+2?", "chosen": "4.", "rejected": "No."}
SFT = {"prompt": "Say hi.", "completion": "Hi."}

SCORERS = '''
import math
def wrong_length(prompts, completions):
    return [1.0] * (len(completions) - 1)
def nan(prompts, completions):
    return [math.nan] * len(completions)
def inf(prompts, completions):
    return [math.inf] * len(completions)
'''


def rows(good: dict, n: int = 8) -> str:
    return "".join(json.dumps(good) + "\n" for _ in range(n))


def pairs(extra: str = "", n: int = 8) -> tuple[str, list[str]]:
    return rows(PAIR, n) + extra, ["method=dpo", "data.format=pairwise"]


def prompts_run(fn: str) -> tuple[str, list[str]]:
    return rows({"prompt": "Tell me a story."}), ["method=reinforce", "data.format=prompts", "scorer=function",
                                                   f"scorer.fn=badscorers:{fn}", "rollout.num_samples=2",
                                                   "rollout.max_new_tokens=4"]


# id -> (data file content or None, overrides, expected text in the error line). "{data}" is the data
# file's path, "{tmp}" the test's folder.
CASES = {
    "malformed JSONL line": (*pairs('{"prompt": "a", "chosen": \n'), "{data}:9: malformed JSON line"),
    "missing field": (*pairs('{"prompt": "a", "chosen": "b"}\n'), "{data}:9: missing field(s) ['rejected']"),
    "wrong field type": (*pairs('{"prompt": 3, "chosen": "b", "rejected": "c"}\n'),
                         "{data}:9: field 'prompt' must be a string or a list"),
    "empty completion": (*pairs('{"prompt": "a", "chosen": " ", "rejected": "c"}\n'),
                         "{data}:9: empty completion in field 'chosen'"),
    "prompt over max length": (rows(SFT, 7) + json.dumps({"prompt": "word " * 300, "completion": "ok"}) + "\n",
                               ["method=sft", "data.format=prompt_completion", "data.truncation=fail",
                                "data.max_prompt_length=64", "data.max_length=96"],
                               "{data}:8: prompt has"),
    "non-UTF-8 bytes": (None, ["method=dpo", "data.format=pairwise"], "{data}:2: not valid UTF-8"),
    "ranked list of the wrong length": (
        rows({"prompt": "p", "completions": ["a", "b", "c"], "scores": [2, 1, 0]}, 7)
        + json.dumps({"prompt": "p", "completions": ["a", "b"], "scores": [1]}) + "\n",
        ["method=reward_model", "loss=kwise", "data.format=ranked"], "{data}:8: field 'scores' has 1 entries for 2"),
    "wrong record kind for the method": (rows(SFT), ["method=dpo", "data.format=prompt_completion"],
                                         "gives 'tokens' records but this method needs 'pairs'"),
    "empty dataset": ("\n\n", ["method=sft", "data.format=prompt_completion"], "the dataset is empty"),
    "missing data file": ("", ["method=sft", "data.format=prompt_completion", "data.path={tmp}/nope.jsonl"],
                          "data.path={tmp}/nope.jsonl: no such file"),
    "unknown method": (rows(SFT), ["method=nope"], "unknown method 'nope' (method=nope); available: "),
    "unknown loss": (*pairs(), "unknown loss 'nope'"),
    "soft labels for a loss without them": (*pairs('{"prompt": "a", "chosen": "b", "rejected": "c", "label": 0.7}\n'),
                                            "loss=ipo takes no soft labels but the data has pairs with label < 1"),
    "unknown scorer": (*prompts_run("nan")[:1], ["method=reinforce", "data.format=prompts", "scorer=nope"],
                       "unknown scorer 'nope'"),
    "unknown data format": (rows(SFT), ["method=sft", "data.format=nope"],
                            "unknown data format 'nope' (data.format); available: chat, "),
    "unknown rollout": (rows(SFT), ["method=sft", "data.format=prompt_completion", "rollout=nope"],
                        "unknown rollout 'nope'"),
    "unknown config key": (rows(SFT), ["method=sft", "trainer.max_stepz=3"], "unknown config key 'trainer.max_stepz'"),
    "wrong value type": (rows(SFT), ["method=sft", "trainer.max_steps=abc"], "config key trainer.max_steps: Value 'abc'"),
    "wrong value type in a method": (*pairs(), "method.beta"),
    "negative activation checkpointing": (rows(SFT), ["method=sft", "trainer.activation_checkpointing=-1"],
                                          "trainer.activation_checkpointing=-1"),
    "missing model path": (rows(SFT), ["method=sft", "model.path={tmp}/no-model"], "model.path={tmp}/no-model: no such folder"),
    "model folder without a tokenizer": (rows(SFT), ["method=sft", "data.format=prompt_completion",
                                                    "model.path={tmp}/no-tokenizer"],
                                         "model.path={tmp}/no-tokenizer: cannot load a tokenizer"),
    "tokenizer without a chat template": (rows(SFT), ["method=sft", "data.format=prompt_completion",
                                                      "model.tokenizer_path={tmp}/bare-tokenizer"],
                                          "bare-tokenizer) has no chat template; set data.chat_template=false"),
    "scorer returns the wrong length": (*prompts_run("wrong_length"), "scorer 'function' (fn=badscorers:wrong_length) returned (1,) rewards for 2"),
    "scorer returns NaN": (*prompts_run("nan"), "scorer 'function' (fn=badscorers:nan) returned a non-finite reward (nan)"),
    "scorer returns inf": (*prompts_run("inf"), "scorer 'function' (fn=badscorers:inf) returned a non-finite reward (inf)"),
    "scorer function not importable": (*prompts_run("missing"), "badscorers:missing"),
}
# Overrides a case adds to its data's default ones.
EXTRA = {"unknown loss": ["loss=nope"], "wrong value type in a method": ["method.beta=abc"],
         "soft labels for a loss without them": ["loss=ipo"]}


@pytest.fixture
def run_cli(tmp_path, monkeypatch, cli_main):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "badscorers.py").write_text(SCORERS)
    sys.modules.pop("badscorers", None)
    return lambda *args: cli_main("train", *TINY, *args)


def one_error_line(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("alignkit: error: "), err
    return lines[0]


def test_the_matrix_has_at_least_twenty_cases():
    assert len(CASES) + len(AFTER_CHECKPOINT) >= 20


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_what_and_where(run_cli, tmp_path, case):
    content, overrides, expected = CASES[case]
    data = tmp_path / "data.jsonl"
    if content is None:
        data.write_bytes(json.dumps(PAIR).encode() + b'\n{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n')
    else:
        data.write_text(content)
    if case == "tokenizer without a chat template":
        bare = tmp_path / "bare-tokenizer"
        shutil.copytree(BUNDLED_TOKENIZER, bare)
        (bare / "chat_template.jinja").unlink()
        config = json.loads((bare / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (bare / "tokenizer_config.json").write_text(json.dumps(config))
    if case == "model folder without a tokenizer":
        from transformers import LlamaConfig

        LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                    vocab_size=64).save_pretrained(tmp_path / "no-tokenizer")
    fill = lambda text: text.replace("{data}", str(data)).replace("{tmp}", str(tmp_path))  # noqa: E731
    args = [fill(a) for a in [f"data.path={data}", *overrides, *EXTRA.get(case, [])]]
    code, _, err = run_cli(*args, "hydra.run.dir=run")
    assert fill(expected) in one_error_line(code, err)
    assert not (tmp_path / "run").exists(), "a fresh run that failed leaves nothing behind"


# ---------------------------------------------------------------------------- after a checkpoint
def _disk_full_at_checkpoint(monkeypatch, step: int) -> None:
    import torch

    from alignkit import checkpoint

    save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if str(f).endswith(checkpoint.STATE) and obj.get("step") == step:
            Path(f).write_bytes(b"\0" * 100)  # part of the file made it to disk
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)


def _disk_full_in_metrics(monkeypatch, step: int) -> None:
    from alignkit.metrics import MetricsLogger

    log = MetricsLogger.log

    def full_disk(self, at, values, split="train"):
        if at == step:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return log(self, at, values, split)

    monkeypatch.setattr(MetricsLogger, "log", full_disk)


def _resume_other(run_cli, tmp_path, key: str) -> list[str]:
    code, _, err = run_cli(f"data.path={tmp_path / 'sft.jsonl'}", "method=sft", "data.format=prompt_completion",
                           "trainer.save_every=1", "hydra.run.dir=first")
    assert code == 0, err
    if key == "method":
        return [f"data.path={tmp_path / 'pairs.jsonl'}", "method=dpo", "data.format=pairwise"]
    return [f"data.path={tmp_path / 'sft.jsonl'}", "method=sft", "data.format=prompt_completion", "model.name=other"]


# id -> (setup(run_cli, tmp_path, monkeypatch) -> overrides, expected, last intact checkpoint or None)
AFTER_CHECKPOINT = {
    "non-finite loss": (lambda r, t, m: ["method=sft", f"data.path={t / 'sft.jsonl'}", "data.format=prompt_completion",
                                         "trainer.optimizer.lr=1e30", "trainer.max_grad_norm=0", "trainer.max_steps=4"],
                        "non-finite loss (nan) at step 3; stopped. The last good checkpoint is {run}/checkpoints/step-000002",
                        "step-000002"),
    "disk fills while writing a checkpoint": (
        lambda r, t, m: (_disk_full_at_checkpoint(m, 2), ["method=sft", f"data.path={t / 'sft.jsonl'}",
                                                          "data.format=prompt_completion"])[1],
        "step-000002: no room left to write (No space left on device)", "step-000001"),
    "disk fills while writing metrics": (
        lambda r, t, m: (_disk_full_in_metrics(m, 2), ["method=sft", f"data.path={t / 'sft.jsonl'}",
                                                       "data.format=prompt_completion"])[1],
        "metrics.jsonl (No space left on device); intact checkpoints (if any) are in", "step-000001"),
    "resume from another method": (lambda r, t, m: [*_resume_other(r, t, "method"), "resume=first"],
                                   "that run trained method 'sft', this one asks for 'dpo'", None),
    "resume from another model": (lambda r, t, m: [*_resume_other(r, t, "model"), "resume=first"],
                                  "that run trained model 'tiny', this one asks for 'other'", None),
}


@pytest.mark.parametrize("case", list(AFTER_CHECKPOINT))
def test_failures_after_a_checkpoint_keep_the_last_good_one(run_cli, tmp_path, monkeypatch, case):
    (tmp_path / "sft.jsonl").write_text(rows(SFT, 12))
    (tmp_path / "pairs.jsonl").write_text(rows(PAIR, 12))
    setup, expected, intact = AFTER_CHECKPOINT[case]
    overrides = setup(run_cli, tmp_path, monkeypatch)
    if intact is None:  # the resume cases: the first run must be left exactly as it was
        before = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "first").rglob("*"))
        code, _, err = run_cli(*overrides)
        assert expected in one_error_line(code, err)
        assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "first").rglob("*")) == before
        return
    code, _, err = run_cli(*overrides, "trainer.save_every=1", "hydra.run.dir=run")
    line = one_error_line(code, err)
    assert expected.replace("{run}", str(tmp_path / "run")) in line
    from alignkit.checkpoint import latest_valid, list_checkpoints

    run = tmp_path / "run"
    assert list_checkpoints(run)[-1].name == intact, line
    assert latest_valid(run)[0].name == intact
    assert not list(run.glob("checkpoints/.*")) and not (run / "final").exists(), "nothing half-written"
    if "checkpoint" in case:
        assert f"the last intact checkpoint is {run / 'checkpoints' / intact}" in line


def test_a_real_write_failure_is_one_line_and_leaves_nothing(tmp_path):
    """The OS refuses the write (a 4 MB file-size limit, RLIMIT_FSIZE): no mock, the real error path."""
    import resource
    import signal
    import subprocess

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    (tmp_path / "sft.jsonl").write_text(rows(SFT, 8))
    proc = subprocess.run([sys.executable, "-m", "alignkit.cli", "train", *TINY, f"data.path={tmp_path / 'sft.jsonl'}",
                           "method=sft", "data.format=prompt_completion", "trainer.save_every=1", "hydra.run.dir=run"],
                          cwd=tmp_path, preexec_fn=limit, capture_output=True, text=True, timeout=600)
    line = one_error_line(proc.returncode, proc.stderr)
    assert f"could not write {tmp_path / 'run' / 'checkpoints' / 'step-000001'}: no room left to write (File too large)" in line
    assert "there is no earlier checkpoint" in line
    assert not (tmp_path / "run").exists(), "a fresh run that failed leaves nothing behind"
