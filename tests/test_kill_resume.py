"""SIGKILL at random points, then resume: the result equals a run that was never interrupted.

Each method runs once straight through, and once as a chain "train, killed, resume, killed, ...,
resume to the end", every process a real ``alignkit train`` killed with SIGKILL (no cleanup). The
kill points are drawn with a fixed seed from tests/killpoint.py's list (between steps, inside every
phase of a checkpoint write, in a metrics line, in the final model's write) so that every point is
hit across the three methods, and the sft chain also takes one kill from outside at a random moment.
Final weights must be bit-identical and the metrics log identical line for line (wall time aside).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.checkpoint import list_checkpoints
from alignkit.metrics import read_metrics

KILLPOINT = Path(__file__).with_name("killpoint.py")
MAX_STEPS = 8
CHECKPOINT_POINTS = ("model", "state-torn", "manifest", "prune")
POINTS = ("step", "metrics-torn", "final", *CHECKPOINT_POINTS)
# Which kills each chain takes: every point once, drawn by a fixed seed (see _chains).
CHAIN_LENGTHS = {"sft": 2, "dpo": 3, "reinforce": 2}
SEED = 20261123

COMMON = ["model=tiny", "trainer.progress=false", "trainer.tensorboard=false", f"trainer.max_steps={MAX_STEPS}",
          "trainer.save_every=2", "trainer.keep_last=2", "trainer.log_every=1", "trainer.batch_size=2",
          "trainer.optimizer.lr=1e-3", "data=custom", "data.eval_fraction=0.25"]


def _chains() -> dict[str, list[tuple[str, int]]]:
    """(point, step) kills per method: all points shuffled by SEED, split over the methods."""
    rng = random.Random(SEED)
    points = list(POINTS)
    rng.shuffle(points)
    chains, start = {}, 0
    for method, length in CHAIN_LENGTHS.items():
        chosen = sorted(points[start:start + length], key=lambda p: p == "final")  # "final" can only be last
        start += length
        kills, last = [], 0
        for index, point in enumerate(chosen):
            room = MAX_STEPS - 2 * (len(chosen) - index - 1)  # leave steps for the kills still to come
            if point == "final":
                kills.append((point, MAX_STEPS))
                continue
            # The first kill must come after checkpoint 2 exists, else there is nothing to resume.
            low = max(last + 1, 3 if point in ("step", "metrics-torn") else 4)
            candidates = [s for s in range(low, room + 1) if point not in CHECKPOINT_POINTS or s % 2 == 0]
            step = rng.choice(candidates)
            kills.append((point, step))
            last = step
        chains[method] = kills
    return chains


CHAINS = _chains()


def test_the_chains_cover_every_kill_point():
    assert sorted(p for kills in CHAINS.values() for p, _ in kills) == sorted(POINTS)


@pytest.fixture
def data_args(tmp_path):
    def make(method: str) -> list[str]:
        path = tmp_path / f"{method}.jsonl"
        if method == "sft":
            rows = [{"prompt": f"Say the number {i}.", "completion": f"{i}"} for i in range(24)]
            return [*_write(path, rows), "method=sft", "data.format=prompt_completion"]
        if method == "dpo":
            rows = [{"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": f"No idea, {i}."}
                    for i in range(24)]
            return [*_write(path, rows), "method=dpo", "data.format=pairwise"]
        rows = [{"prompt": f"Explain idea {i} at length."} for i in range(16)]
        return [*_write(path, rows), "method=reinforce", "data.format=prompts", "scorer=function",
                "scorer.fn=alignkit.plugins.scorers.rewards:brevity", "rollout.num_samples=2",
                "rollout.max_new_tokens=6"]

    return make


def _write(path: Path, rows: list[dict]) -> list[str]:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [f"data.path={path}"]


def _env() -> dict[str, str]:
    return {**os.environ, "ALIGNKIT_CACHE": os.environ.get("ALIGNKIT_CACHE", str(Path.home() / ".cache" / "alignkit"))}


def _train(tmp_path: Path, point: str, step: int, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(KILLPOINT), point, str(step), *args], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)


def _kill_from_outside(tmp_path: Path, run: Path, args: list[str], after_step: int) -> None:
    """Start a run and SIGKILL it as soon as its log shows ``after_step``: wherever it then is."""
    proc = subprocess.Popen([sys.executable, str(KILLPOINT), "none", "0", *args], cwd=tmp_path, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            if any(r["step"] >= after_step and r["split"] == "train" for r in read_metrics(run)):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        assert proc.wait(timeout=600) == -signal.SIGKILL, "the run ended before it could be killed"
    finally:
        if proc.poll() is None:
            proc.kill()


def _log(run: Path) -> list[dict]:
    from alignkit.metrics import is_wall_time

    return [{k: v for k, v in r.items() if not is_wall_time(k)} for r in read_metrics(run)]


@pytest.mark.parametrize("method", list(CHAINS))
def test_killed_and_resumed_equals_uninterrupted(tmp_path, data_args, method):
    args = [*COMMON, *data_args(method)]
    straight = tmp_path / "straight"
    done = _train(tmp_path, "none", 0, [*args, f"hydra.run.dir={straight}"])
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "killed"
    first = [f"hydra.run.dir={run}"]
    history = []
    if method == "sft":
        _kill_from_outside(tmp_path, run, [*args, *first], after_step=3)
        history.append("outside after step 3")
        first = [f"resume={run}"]
    for point, step in CHAINS[method]:
        killed = _train(tmp_path, point, step, [*args, *first])
        history.append(f"{point}@{step}")
        assert killed.returncode == -signal.SIGKILL, (history, killed.stderr[-3000:])
        first = [f"resume={run}"]
    resumed = _train(tmp_path, "none", 0, [*args, f"resume={run}"])
    assert resumed.returncode == 0, (history, resumed.stderr[-3000:])
    assert "resumed from" in resumed.stdout

    a, b = load_file(str(straight / "final" / "model.safetensors")), load_file(str(run / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), (history, key)
    assert _log(run) == _log(straight), history
    assert [c.name for c in list_checkpoints(run)] == [c.name for c in list_checkpoints(straight)], history
    assert not list(run.glob("checkpoints/.*")) and not list(run.glob(".final*")), "partial writes cleaned up"


def test_a_kill_in_the_final_write_after_an_uneven_last_step(tmp_path, data_args):
    """max_steps=7, save_every=2: the last checkpoint (step 7) is written after the loop, not in it."""
    args = [*[a for a in COMMON if not a.startswith("trainer.max_steps")], "trainer.max_steps=7", *data_args("sft")]
    straight, run = tmp_path / "straight", tmp_path / "killed"
    assert _train(tmp_path, "none", 0, [*args, f"hydra.run.dir={straight}"]).returncode == 0
    killed = _train(tmp_path, "final", 7, [*args, f"hydra.run.dir={run}"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = _train(tmp_path, "none", 0, [*args, f"resume={run}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(str(straight / "final" / "model.safetensors")), load_file(str(run / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _log(run) == _log(straight)
    assert [r["split"] for r in _log(run)].count("eval") == 2, "one 'before' and one 'after' line"
