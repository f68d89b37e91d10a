"""The DPO reference cache is reused only for the exact setup it was built for (issue 16, class 7).

A cache built by one setup is put into a fresh run folder of another setup that differs in one thing
that changes the tokens or the reference: the system prompt, the chat template, the data file's rows
(same path), the initial model's weights (same folder). The run must not reuse it: it recomputes, so
its step-0 loss is exactly ln 2 (policy and reference agree on every pair), and its log names what
changed. The same setup reuses it. A resume whose cache no longer fits stops in one line naming
the changed part (a trained policy cannot recompute the initial one's log-probs).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch

from alignkit.metrics import read_metrics
from alignkit.reference import CACHE_FILE
from alignkit.testing import TINY_DEFAULTS, compose_run_config

LN2_FP32 = float(torch.tensor(math.log(2.0), dtype=torch.float32))


def pairs(tag: str) -> str:
    return "".join(json.dumps({"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f"It is {2 * i}{tag}.",
                               "rejected": f"I will not answer {i}{tag}."}) + "\n" for i in range(24))


def dpo_args(data: Path) -> list[str]:
    return ["method=dpo", "method.reference=cached", "data=custom", f"data.path={data}", "data.format=pairwise",
            "data.eval_fraction=0.25", "trainer.batch_size=3", "trainer.eval_batch_size=4",
            "trainer.optimizer.lr=1e-3", "trainer.max_steps=1"]


def first_train_loss(run: Path) -> float:
    return next(r["loss"] for r in read_metrics(run) if r["split"] == "train")


def train(args: list[str], run: Path) -> None:
    from alignkit.loop import Trainer

    Trainer(compose_run_config(*args), run).fit()  # the Trainer itself: the cache file is the run's only file


def tiny_folder(folder: Path, seed: int) -> Path:
    from tiny import tiny_model_folder

    shutil.rmtree(folder, ignore_errors=True)
    return tiny_model_folder(folder, "llama", seed=seed)


# name -> (overrides of the first setup, overrides of the second, change between them, expected log text)
Change = Callable[[Path], None]
CASES: dict[str, tuple[list[str], list[str], Change | None, str]] = {
    "system prompt": ([], ["data.system_prompt='Answer in one word.'"], None,
                      'built with data.system_prompt=null; this run has data.system_prompt="Answer in one word."'),
    "chat template": ([], ["data.chat_template=false"], None,
                      "built with data.chat_template=true; this run has data.chat_template=false"),
    "rows of the same data file": ([], [], lambda tmp: (tmp / "pairs.jsonl").write_text(pairs(" indeed")),
                                   "built on other token ids (the encoded examples or their batches)"),
    "weights in the same model folder": (["model.path={tmp}/model"], ["model.path={tmp}/model"],
                                         lambda tmp: tiny_folder(tmp / "model", seed=1),
                                         "built on other initial model weights"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_cache_from_another_setup_is_recomputed_and_named(case, tmp_path, capsys):
    first, second, change, expected = CASES[case]
    data = tmp_path / "pairs.jsonl"
    data.write_text(pairs(""))
    tiny_folder(tmp_path / "model", seed=0)
    fill = lambda args: [a.replace("{tmp}", str(tmp_path)) for a in args]  # noqa: E731
    train([*dpo_args(data), *fill(first)], tmp_path / "a")
    if change is not None:
        change(tmp_path)

    fresh = tmp_path / "b"
    fresh.mkdir()
    shutil.copy(tmp_path / "a" / CACHE_FILE, fresh / CACHE_FILE)
    capsys.readouterr()
    train([*dpo_args(data), *fill(second)], fresh)
    out = capsys.readouterr().out
    assert expected in out and "not reused, recomputing" in out, out
    assert first_train_loss(fresh) == LN2_FP32, "recomputed from this setup's batches: policy == reference"

    # The same setup finds its own cache and uses it.
    same = tmp_path / "c"
    same.mkdir()
    shutil.copy(fresh / CACHE_FILE, same / CACHE_FILE)
    capsys.readouterr()
    train([*dpo_args(data), *fill(second)], same)
    assert f"reference log-probs: reusing {same / CACHE_FILE}" in capsys.readouterr().out
    assert first_train_loss(same) == LN2_FP32


def test_a_resume_whose_cache_no_longer_fits_stops_naming_the_part(cli_main, pairs_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    args = [*TINY_DEFAULTS, *dpo_args(pairs_file)[:-1], "trainer.max_steps=2", "trainer.save_every=1"]
    code, out, err = cli_main("train", *args, f"hydra.run.dir={run}")
    assert code == 0, err
    config = (run / "config.yaml").read_bytes()
    code, out, err = cli_main("train", f"resume={run}", "data.system_prompt='Be brief.'", "trainer.max_steps=3",
                              "resume_force=true")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"reference cache {run / CACHE_FILE} was built with data.system_prompt=null; this run has " \
           'data.system_prompt="Be brief."' in lines[0] and "cannot be recomputed from a trained policy" in lines[0]
    assert (run / "config.yaml").read_bytes() == config, "a resume that did not start changes nothing"
