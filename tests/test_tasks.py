"""The bundled verifiable task (data=arith): regenerated exactly by its generator, answers right by an
independent evaluation, a fixed split with no question on both sides, and difficulty settings honoured."""

from __future__ import annotations

import ast
import gzip
import json
import operator
import random
import re
from pathlib import Path

import pytest

from alignkit.data import asset_path as _asset
from alignkit.plugins.tasks import arithmetic


def asset_path(relative: str) -> Path:
    return Path(_asset(relative))

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def evaluate(expression: str) -> int:
    """Integer arithmetic of + - * by the Python grammar, nothing else allowed."""
    def walk(node):
        if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
            return BINARY[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise ValueError(ast.dump(node))
    return walk(ast.parse(expression, mode="eval").body)


def read(name: str) -> list[dict]:
    with gzip.open(asset_path(f"data/arith/{name}.jsonl.gz"), "rt") as handle:
        return [json.loads(line) for line in handle]


def bundled_arguments() -> list[str]:
    """The generator command line the bundled README documents (one ``--flag value`` per line block)."""
    readme = asset_path("data/arith/README.md").read_text()
    command = re.search(r"python -m alignkit\.plugins\.tasks\.arithmetic (.+)", readme).group(1)
    return [a for a in command.split() if not a.startswith("--out") and not a.startswith("<")]


def test_the_bundled_files_are_the_generators_output(tmp_path):
    arithmetic.main(["--out", str(tmp_path), *bundled_arguments()])
    for side in ("train", "heldout"):
        assert (tmp_path / f"{side}.jsonl.gz").read_bytes() == asset_path(f"data/arith/{side}.jsonl.gz").read_bytes()


def test_answers_are_right_and_the_split_is_clean():
    train, held_out = read("train"), read("heldout")
    assert len(train) >= 2000 and len(held_out) >= 200
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    for row in train + held_out:
        value = evaluate(row["expression"])
        assert row["answer"] == str(value) and value >= 1
        # every number of the arithmetic is in the question, in order
        numbers = [int(n) for n in re.findall(r"\d+", row["expression"])]
        assert [int(n) for n in re.findall(r"\d+", row["prompt"])] == numbers
        assert row["prompt"].endswith(arithmetic.INSTRUCTION)
    assert all(arithmetic.is_held_out(r["prompt"], 8) for r in held_out)


@pytest.mark.parametrize("difficulty", [arithmetic.Difficulty(1, 9, "+"), arithmetic.Difficulty(3, 30, "+-*", 12),
                                        arithmetic.Difficulty(1, 19, "*")])
def test_difficulty_settings_are_honoured(difficulty):
    rng = random.Random(0)
    for _ in range(300):
        row = arithmetic.problem(rng, difficulty)
        ops = re.findall(r"[-+*]", row["expression"])
        numbers = [int(n) for n in re.findall(r"\d+", row["expression"])]
        assert len(ops) == difficulty.steps and set(ops) <= set(difficulty.operations)
        assert "*" not in ops[1:]  # a product is a first step only
        factors = numbers[:2] if ops[0] == "*" else []
        assert all(2 <= f <= difficulty.max_factor for f in factors)
        assert all(1 <= n <= difficulty.max_number for n in numbers[len(factors):])
        assert evaluate(row["expression"]) == int(row["answer"]) >= 1


def test_impossible_requests_fail_with_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit, match="distinct problems"):
        arithmetic.main(["--out", str(tmp_path), "--operations", "+", "--max-number", "2", "--train", "50"])
    with pytest.raises(SystemExit, match="operations"):
        arithmetic.main(["--out", str(tmp_path), "--operations", "/"])
