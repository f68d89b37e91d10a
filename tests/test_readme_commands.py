"""Every command the README lists under "Using it" runs, with tiny overrides, and exits 0.

The commands are read from README.md itself, so the README cannot drift from what the CLI accepts.
Each one runs as a user would type it (a subprocess of the real entry point, in one scratch folder)
with overrides that make it a smoke run: ``model=tiny`` and two steps for training, a few prompts
and tokens for generation. Commands that name a run folder (``runs/dpo-...``, ``runs/rm_hh-...``)
get one made by an earlier command, or by a tiny run of that recipe. Each command's wall time is
printed (the aim is under 30 s on 2 cores); time is not asserted.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, CLIResult, write_jsonl

README = REPO / "README.md"
SECTION = "## Using it"

#: Added to every fresh ``alignkit train`` (a key the command already sets is left as it is).
TINY_TRAIN = (("model", "tiny"), ("trainer.max_steps", "2"), ("trainer.save_every", "2"),
              ("data.eval_examples", "8"), ("trainer.eval_batch_size", "8"), ("trainer.tensorboard", "false"),
              ("probe.max_new_tokens", "8"))
#: More for the training commands of an online recipe (sampling dominates their time).
TINY_RECIPE = {"grpo_arith": (("rollout.num_samples", "2"), ("rollout.max_new_tokens", "8"),
                              ("data.eval_examples", "4"))}
#: Added to the other commands, by their first words.
TINY_FLAGS = {("chat",): (("--max-new-tokens", "8"),),
              ("generate",): (("--max-new-tokens", "8"), ("--n", "4")),
              ("eval", "rm"): (("--n", "8"),),
              ("eval", "winrate"): (("--max-new-tokens", "8"), ("--n", "4"), ("--rounds", "50")),
              ("eval", "elo"): (("--max-new-tokens", "8"), ("--n", "4"), ("--rounds", "50")),
              ("data", "inspect"): (("--model", "tiny"),)}
#: How to make a run folder the README names but no earlier command made (tiny overrides added).
RECIPES = {"quickstart": ("experiment=quickstart",), "rm_hh": ("experiment=rm_hh",), "dpo": ("method=dpo",),
           "steerlm": ("method=steerlm", "data=custom", "data.path=steer.jsonl", "data.format=steerlm",
                       "data.eval_fraction=0.25")}
#: ``runs/a``, ``runs/b``: any two trained runs.
STAND_INS = {"a": "quickstart", "b": "dpo"}
#: ``runs/<recipe>-...`` or ``runs/<recipe>-<date>-<time>``, then an optional path inside the run.
RUN_PLACEHOLDER = re.compile(r"runs/(?P<kind>[A-Za-z_]+)-(?:\.\.\.|\d{8}-\d{6})(?P<inside>/[^\s]*)?")
STAND_IN = re.compile(r"runs/(?P<name>[ab])(?P<inside>/[^\s]*)?")
PER_COMMAND_TIMEOUT = 300


def readme_commands(text: str) -> list[list[str]]:
    """The ``alignkit ...`` lines of the README's "Using it" code block, as argument lists (comments dropped)."""
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return [shlex.split(line.strip(), comments=True) for line in body.splitlines()
            if line.startswith("    ") and line.strip().startswith("alignkit ")]


def with_defaults(args: list[str], defaults: tuple[tuple[str, str], ...], *, flags: bool) -> list[str]:
    """``args`` plus each ``(key, value)`` of ``defaults`` whose key ``args`` does not set already."""
    given = set(args) if flags else {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
    extra = [part for key, value in defaults if key not in given
             for part in ((key, value) if flags else (f"{key}={value}",))]
    return [*args, *extra]


def train_kind(args: list[str]) -> str:
    """The recipe a training command follows: its experiment, else its method (``sft`` by default)."""
    values = dict(a.split("=", 1) for a in args if "=" in a)
    return values.get("experiment") or values.get("method") or "sft"


class Workspace:
    """One scratch folder where the README's commands run in order, sharing the run folders they make."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs: dict[str, Path] = {}
        self.durations: list[tuple[float, str]] = []
        rows = [{"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f"It is {2 * i}.",
                 "rejected": f"I will not answer {i}."} for i in range(24)]
        write_jsonl(root / "pairs.jsonl", rows)
        write_jsonl(root / "p.jsonl", [{"prompt": r["prompt"]} for r in rows[:4]])
        write_jsonl(root / "steer.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"],
                                            "attributes": {"verbosity": i % 5, "helpfulness": 4}}
                                           for i, r in enumerate(rows)])

    def run(self, args: list[str]) -> CLIResult:
        """``alignkit <args>`` as a subprocess in the workspace; its wall time is recorded and printed."""
        env = {**os.environ, "HF_HUB_OFFLINE": "1",
               "ALIGNKIT_CACHE": os.environ.get("ALIGNKIT_CACHE", str(Path.home() / ".cache" / "alignkit"))}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "alignkit.cli", *args], cwd=self.root, env=env,
                              capture_output=True, text=True, timeout=PER_COMMAND_TIMEOUT)
        seconds = time.perf_counter() - start
        self.durations.append((seconds, shlex.join(["alignkit", *args])))
        print(f"{seconds:6.1f} s  alignkit {shlex.join(args)}")
        return CLIResult(proc)

    def train(self, args: list[str]) -> CLIResult:
        """A fresh tiny training run into ``runs/<kind>-<n>``; the first run of each kind is kept for later commands."""
        kind = train_kind(args)
        folder = self.root / "runs" / f"{kind}-{len(self.durations)}"
        full = with_defaults(args, TINY_TRAIN + TINY_RECIPE.get(kind, ()), flags=False)
        result = self.run([*full, f"hydra.run.dir={folder}"])
        if result.returncode == 0:
            self.runs.setdefault(kind, folder)
        return result

    def run_folder(self, kind: str) -> Path:
        """A run of ``kind`` made earlier, or made now by its recipe."""
        if kind not in self.runs:
            result = self.train(["train", *RECIPES[kind]])
            assert result.returncode == 0, f"making a {kind} run for the README's commands failed: {result}"
        return self.runs[kind]

    def path_in_run(self, kind: str, inside: str | None) -> str:
        """``runs/<kind>-...<inside>`` made concrete; a named checkpoint the tiny run lacks is its newest one."""
        folder = self.run_folder(kind)
        path = folder / inside.lstrip("/") if inside else folder
        if not path.exists() and path.parent.name == "checkpoints":
            path = max(path.parent.glob("step-*"))
        return str(path)

    def concrete(self, arg: str) -> str:
        """One argument with its placeholders replaced: run folders, and ``smollm2`` by ``tiny``."""
        arg = RUN_PLACEHOLDER.sub(lambda m: self.path_in_run(m["kind"], m["inside"]), arg)
        arg = STAND_IN.sub(lambda m: self.path_in_run(STAND_INS[m["name"]], m["inside"]), arg)
        return re.sub(r"(^|:)smollm2$", r"\1tiny", arg)

    def readme_command(self, words: list[str]) -> CLIResult:
        """Run one README command (``alignkit`` dropped) the tiny way."""
        args = [self.concrete(a) for a in words[1:]]
        if args[0] == "train" and any(a.startswith("resume=") for a in args):
            return self.run([*args, "trainer.max_steps=3"])  # continue the two-step run by one step
        if args[0] == "train":
            return self.train(args)
        for head, flags in TINY_FLAGS.items():
            if tuple(args[:len(head)]) == head:
                args = with_defaults(args, flags, flags=True)
        return self.run(args)


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    space = Workspace(tmp_path_factory.mktemp("readme"))
    yield space
    total = sum(seconds for seconds, _ in space.durations)
    print(f"\nREADME commands: {len(space.durations)} runs, {total:.1f} s in all")


def test_the_using_it_section_is_parsed():
    text = ("intro\n\n## Using it\n\n    alignkit ls methods                  # also: losses\n"
            "    alignkit chat --model runs/x/final --prompt \"How do I bake bread?\"   # --sample\n"
            "not code: alignkit plot\n\n## Next\n\n    alignkit plugins\n")
    assert readme_commands(text) == [["alignkit", "ls", "methods"],
                                     ["alignkit", "chat", "--model", "runs/x/final", "--prompt", "How do I bake bread?"]]
    assert len(COMMANDS) >= 10 and all(c[0] == "alignkit" for c in COMMANDS)


def test_tiny_overrides_keep_what_the_command_sets():
    assert with_defaults(["train", "model=tiny", "trainer.max_steps=5"], TINY_TRAIN[:2], flags=False) == \
        ["train", "model=tiny", "trainer.max_steps=5"]
    assert with_defaults(["chat"], (("--max-new-tokens", "8"),), flags=True) == ["chat", "--max-new-tokens", "8"]
    assert train_kind(["train", "experiment=grpo_arith", "loss=dr_grpo"]) == "grpo_arith"
    assert train_kind(["train", "method=dpo"]) == "dpo" and train_kind(["train"]) == "sft"


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(c[1:3]) for c in COMMANDS])
def test_readme_command_runs(workspace, words, capsys):
    with capsys.disabled():
        result = workspace.readme_command(words)
    assert result.returncode == 0, f"{shlex.join(words)}\n{result}"
