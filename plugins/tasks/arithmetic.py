"""Arithmetic word problems with checkable answers: the bundled ``data=arith`` task, and its generator.

Each problem is a short story about a count of things that changes ``steps`` times, e.g.::

    Mia has 4 boxes. Each box holds 6 marbles. Then she gives 5 to a friend.
    How many marbles does Mia have now? Give the final answer as a number.      -> answer "19"

A step is an addition ("buys 3 more"), a subtraction ("gives 5 to a friend"; never emptying the count, so
the last number in the text is not the answer) or, as the first step only, a multiplication ("4 boxes,
each holds 6"). Difficulty is set by ``steps``, the largest number ``max_number`` and the ``operations``
drawn from. Rows are ``{"prompt", "answer", "expression", "steps"}``: the answer as text (what a checker
compares to, e.g. ``scorer=math``), the arithmetic it stands for (``"4 * 6 - 5"``), and the step count.

The split is fixed by the question text: a problem is held out when a hash of its text says so (1 in
``heldout_every``), so a question never appears on both sides and the split does not depend on how
many problems are drawn. Generation is seeded and deterministic::

    python -m alignkit.plugins.tasks.arithmetic --out my_task --steps 2 --max-number 20 --train 3000
    alignkit train experiment=grpo_arith data.path=my_task/train.jsonl data.eval_path=my_task/heldout.jsonl

The bundled files (``alignkit/assets/data/arith``) are this generator's output with the arguments in
their README; ``tests/test_tasks.py`` regenerates them and compares.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

NAMES = [("Tom", "he"), ("Anna", "she"), ("Ben", "he"), ("Lily", "she"), ("Sam", "he"), ("Mia", "she"),
         ("Jack", "he"), ("Emma", "she"), ("Leo", "he"), ("Zoe", "she"), ("Max", "he"), ("Ella", "she")]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "coins", "balloons", "cards", "shells",
         "stamps", "toy cars"]
CONTAINERS = ["bags", "boxes", "jars", "baskets"]
FRIENDS = ["a friend", "a neighbor", "{his} sister", "{his} brother", "{his} cousin", "{his} teacher"]
GAINS = ["buys {n} more", "finds {n} more", "gets {n} more from {friend}", "picks up {n} more", "wins {n} more"]
LOSSES = ["gives {n} to {friend}", "loses {n}", "sells {n}", "gives away {n}", "uses {n}"]
INSTRUCTION = "Give the final answer as a number."
OPERATIONS = ("+", "-", "*")


@dataclass(frozen=True)
class Difficulty:
    """What a problem may contain.

    Attributes:
        steps: changes to the count (1: one operation).
        max_number: largest number an addition, a subtraction or the starting count uses (≥ 2).
        operations: drawn from ``+``, ``-``, ``*``; ``*`` only as the first step ("a boxes, each holds
            b", factors 2..``max_factor``), drawn with the same chance as each other operation.
        max_factor: largest factor of a multiplication.
    """

    steps: int = 1
    max_number: int = 19
    operations: str = "+-*"
    max_factor: int = 9

    def __post_init__(self) -> None:
        if self.steps < 1 or self.max_number < 2 or self.max_factor < 2:
            raise ValueError("steps must be >= 1, max_number and max_factor >= 2")
        if not self.operations or set(self.operations) - set(OPERATIONS):
            raise ValueError(f"operations={self.operations!r}: use characters of {''.join(OPERATIONS)}")
        if self.operations == "*" and self.steps > 1:
            raise ValueError("'*' is a first step only: with steps > 1 add '+' or '-'")


def problem(rng: random.Random, difficulty: Difficulty) -> dict:
    """One problem: ``{"prompt", "answer", "expression", "steps"}`` (the answer a non-negative integer, as text)."""
    name, he = rng.choice(NAMES)
    his = "his" if he == "he" else "her"
    item = rng.choice(ITEMS)
    first_ops = list(difficulty.operations)
    if rng.choice(first_ops) == "*":
        a, b = rng.randint(2, difficulty.max_factor), rng.randint(2, difficulty.max_factor)
        box = rng.choice(CONTAINERS)
        sentences = [f"{name} has {a} {box}.", f"Each of the {box} holds {b} {item}."]
        total, expression, done = a * b, f"{a} * {b}", 1
    else:
        total = rng.randint(2, difficulty.max_number)
        sentences, expression, done = [f"{name} has {total} {item}."], str(total), 0
    changes = [op for op in difficulty.operations if op != "*"]
    for step in range(done, difficulty.steps):
        # A subtraction leaves at least 1: after an emptied count the next number would be the answer.
        op = rng.choice(changes) if total >= 2 else "+"
        if op == "-" and total >= 2:
            n = rng.randint(1, min(total - 1, difficulty.max_number))
            verb, total, expression = rng.choice(LOSSES), total - n, f"{expression} - {n}"
        else:
            n = rng.randint(1, difficulty.max_number)
            verb, total, expression = rng.choice(GAINS), total + n, f"{expression} + {n}"
        subject = he.capitalize() if step == 0 else f"Then {he}"
        sentences.append(f"{subject} {verb.format(n=n, friend=rng.choice(FRIENDS).format(his=his))}.")
    sentences.append(f"How many {item} does {name} have {'in total' if done and difficulty.steps == 1 else 'now'}?")
    return {"prompt": " ".join(sentences + [INSTRUCTION]), "answer": str(total), "expression": expression,
            "steps": difficulty.steps}


def is_held_out(prompt: str, every: int) -> bool:
    """The fixed split: held out when the SHA-1 of the question's text is divisible by ``every``."""
    return int(hashlib.sha1(prompt.encode()).hexdigest(), 16) % every == 0


def generate(difficulty: Difficulty, *, train: int, heldout: int, seed: int = 0, heldout_every: int = 8,
             patience: int = 20_000) -> dict[str, list[dict]]:
    """``{"train": [...], "heldout": [...]}``: distinct problems, ``train`` and ``heldout`` of them, in draw order.

    Raises:
        ValueError: the difficulty has fewer distinct problems than asked for (``patience`` draws in a row
            gave nothing new for a side still short).
    """
    rng, seen = random.Random(seed), set()
    out: dict[str, list[dict]] = {"train": [], "heldout": []}
    want = {"train": train, "heldout": heldout}
    idle = 0
    while any(len(out[k]) < want[k] for k in out):
        row = problem(rng, difficulty)
        side = "heldout" if is_held_out(row["prompt"], heldout_every) else "train"
        if row["prompt"] in seen or len(out[side]) >= want[side]:
            idle += 1
            if idle > patience:
                raise ValueError(f"{difficulty}: only {len(out['train'])} training and {len(out['heldout'])} held-out "
                                 "distinct problems found; ask for fewer or make it harder")
            continue
        idle = 0
        seen.add(row["prompt"])
        out[side].append(row)
    return out


def write(rows: list[dict], path: Path) -> None:
    """JSON lines, gzip-compressed when the name ends in ``.gz`` (byte-identical for identical rows)."""
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write an arithmetic word-problem task: train and held-out JSONL.")
    parser.add_argument("--out", required=True, help="folder for train.jsonl[.gz] and heldout.jsonl[.gz]")
    parser.add_argument("--steps", type=int, default=Difficulty.steps)
    parser.add_argument("--max-number", type=int, default=Difficulty.max_number)
    parser.add_argument("--operations", default=Difficulty.operations)
    parser.add_argument("--max-factor", type=int, default=Difficulty.max_factor)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--heldout", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gzip", action="store_true", help="write .jsonl.gz")
    args = parser.parse_args(argv)
    try:
        difficulty = Difficulty(args.steps, args.max_number, args.operations, args.max_factor)
        split = generate(difficulty, train=args.train, heldout=args.heldout, seed=args.seed)
    except ValueError as exc:
        raise SystemExit(f"alignkit.plugins.tasks.arithmetic: {exc}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ".jsonl.gz" if args.gzip else ".jsonl"
    for side, rows in split.items():
        write(rows, out / f"{side}{suffix}")
        print(f"{out / (side + suffix)}: {len(rows)} problems")


if __name__ == "__main__":
    main()
