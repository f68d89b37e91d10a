"""``alignkit eval rm|winrate|elo`` and ``alignkit generate``: argument parsing and reports.

The statistics live in :mod:`.winrate` and :mod:`.ratings`, the judges in :mod:`.judges`, the
generation in :mod:`.generation`; this module wires them to the command line and writes every
result into an output folder (``--out``, default ``runs/eval/<kind>-<time>``): ``results.json``
(written atomically) plus the per-item rows (``scores.jsonl`` / ``judgments.jsonl``) and the
generated answers (``outputs/<model>.jsonl``), which later commands accept in place of a model.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any

import numpy as np

from alignkit.api import ConfigError, DataError, empty_note, last_user_text, read_rows

from . import generation, judges, ratings, results
from .reward_accuracy import reward_accuracy, reward_stats
from .winrate import win_rate_summary


# ---------------------------------------------------------------------------- shared options
def _generation_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=int, default=128)
    group.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    group.add_argument("--temperature", type=float, default=0.7)
    group.add_argument("--top-p", type=float, default=1.0)
    group.add_argument("--seed", type=int, default=0, help="sampling and bootstrap seed")
    group.add_argument("--batch-size", type=int, default=8)
    group.add_argument("--max-prompt-length", type=int, default=None,
                       help="keep the last N prompt tokens (default: the model's saved data.max_prompt_length, else 512)")
    group.add_argument("--repetition-guard", type=int, default=3, metavar="N",
                       help="stop an answer once a passage repeats N times in a row, keeping one copy, and say "
                            "how many were stopped (default 3; 0: off)")


def _options(args: argparse.Namespace) -> generation.GenerationOptions:
    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise ConfigError("--max-new-tokens and --batch-size must be >= 1")
    if args.repetition_guard < 0 or args.repetition_guard == 1:
        raise ConfigError(f"--repetition-guard {args.repetition_guard}: 0 (off) or a number of repeats >= 2")
    return generation.GenerationOptions(max_new_tokens=args.max_new_tokens, sample=args.sample,
                                        temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                        batch_size=args.batch_size, max_prompt_length=args.max_prompt_length,
                                        repetition_guard=args.repetition_guard)


def _prompt_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--prompts", required=required, help="prompt file (JSONL/JSON/Parquet/save_to_disk folder)")
    parser.add_argument("--format", default="auto",
                        help="data format of the prompt file (default: inferred from its fields)")
    parser.add_argument("--n", type=int, help="use only the first N prompts")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/")).strip("_")[-80:] or "model"


def _answers(name: str, prompts: list[list[dict]], options: generation.GenerationOptions, out: Path) -> list[str]:
    answers, reasons = generation.answers_for(name, prompts, options)
    generation.write_answers(out / "outputs" / f"{_slug(name)}.jsonl", prompts, answers, name, reasons)
    _say_notes(answers, reasons, name)
    return answers


def _say_notes(answers: list[str], reasons: list, model: str) -> None:
    """Empty answers (greedy decoding that ends the turn at once) and answers the repetition guard stopped
    are said, not left to be found in the file."""
    for note in (empty_note(answers, model), generation.repetition_note(reasons, model)):
        if note:
            print(note)


# ---------------------------------------------------------------------------- eval rm
def eval_rm(args: argparse.Namespace) -> int:
    import torch

    from alignkit.api import RewardModelScorer, resolve_reward_folder

    folder = resolve_reward_folder(args.model, key="--model")  # errors name the argument as typed
    # Encoded as the reward model was trained (its saved settings); an explicit option that differs is reported.
    scorer = RewardModelScorer(folder, device=torch.device("cpu"), attribute=args.attribute,
                               batch_size=args.batch_size, max_length=args.max_length, system_prompt=args.system,
                               chat_template=args.chat_template, source="eval rm")
    summary, rows = reward_accuracy(scorer, args.data, data_format=args.format, limit=args.n)
    summary.update(reward_stats(rows))
    out = results.output_dir(args.out, "rm")
    results.write_jsonl(out / "scores.jsonl", rows)
    results.write_json(out / "results.json", {"command": "eval rm", "model": str(folder), "data": args.data,
                                              "format": args.format, "encoding": dataclasses.asdict(scorer.encoding),
                                              **summary})
    n = int(summary["pairs"])
    print(f"reward model {folder} on {args.data} ({n} pairs)")
    print(f"  accuracy     {summary['accuracy']:.4f}  95% CI [{summary['accuracy_ci_low']:.4f}, "
          f"{summary['accuracy_ci_high']:.4f}] (Wilson)")
    print(f"  margin       {summary['margin']:.4f}  95% CI [{summary['margin_ci_low']:.4f}, {summary['margin_ci_high']:.4f}]")
    print(f"  rewards      mean {summary['reward_mean']:.4f}, std {summary['reward_std']:.4f}")
    print(f"  results      {out / 'results.json'} (per pair: {out / 'scores.jsonl'})")
    return 0


# ---------------------------------------------------------------------------- eval winrate
def eval_winrate(args: argparse.Namespace) -> int:
    judge_spec = judges.check_judge(args.judge)  # a bad --judge fails before any generation
    prompts = generation.read_prompts(args.prompts, data_format=args.format, limit=args.n)
    options = _options(args)
    out = results.output_dir(args.out, "winrate")
    policy = _answers(args.policy, prompts, options, out)
    baseline = _answers(args.baseline, prompts, options, out)
    judge = judges.build_judge(args.judge, batch_size=args.batch_size)
    preference = judge.compare(prompts, policy, baseline)  # (n,)
    length_diff = np.array([len(p) - len(b) for p, b in zip(policy, baseline)], dtype=np.float64)  # (n,)
    summary = win_rate_summary(preference, length_diff, rounds=args.rounds, seed=args.seed)
    rows = [{"prompt": last_user_text(q), "model_a": args.policy, "model_b": args.baseline, "completion_a": p,
             "completion_b": b, "preference": float(y), "length_a": len(p), "length_b": len(b)}
            for q, p, b, y in zip(prompts, policy, baseline, preference)]
    extra: dict[str, float] = {}
    orders = getattr(judge, "last_orders", None)
    if orders is not None:  # LLM judge: both presentation orders, and how often they agree
        for row, as_a, as_b in zip(rows, *orders):
            row["preference_policy_first"], row["preference_policy_second"] = float(as_a), float(as_b)
        extra["judge_answer_mass"] = float(np.mean(judge.mass))
        extra["position_agreement"] = float(np.mean((orders[0] > 0.5) == (orders[1] > 0.5)))
    results.write_jsonl(out / "judgments.jsonl", rows)
    results.write_json(out / "results.json", {"command": "eval winrate", "policy": args.policy,
                                              "baseline": args.baseline, "judge": args.judge, "judge_kind": judge_spec.kind,
                                              "prompts": args.prompts, "generation": vars(options), **summary, **extra})
    n = len(prompts)
    print(f"win-rate of {args.policy} over {args.baseline} ({n} prompts, judge {args.judge})")
    print(f"  win-rate     {summary['win_rate']:.4f}  95% CI [{summary['win_rate_ci_low']:.4f}, "
          f"{summary['win_rate_ci_high']:.4f}] ({summary['interval']})  "
          f"wins {summary['wins']:.0f}, ties {summary['ties']:.0f}, losses {summary['losses']:.0f}")
    lc_ci = (f"  95% CI [{summary['lc_win_rate_ci_low']:.4f}, {summary['lc_win_rate_ci_high']:.4f}] (bootstrap)"
             if "lc_win_rate_ci_low" in summary else "")
    print(f"  LC win-rate  {summary['lc_win_rate']:.4f}{lc_ci}  (length slope {summary['length_slope']:.3f}; "
          f"mean length difference {summary['mean_length_diff']:+.1f} chars)")
    if extra:
        print(f"  judge        mean P(A or B) = {extra['judge_answer_mass']:.3f} (how much it answers in format); "
              f"both orders agree on {extra['position_agreement']:.0%} of prompts")
    print(f"  results      {out / 'results.json'} (per prompt: {out / 'judgments.jsonl'})")
    return 0


# ---------------------------------------------------------------------------- eval elo
def read_judgments(path: str) -> tuple[list[str], list[int], list[int], list[float]]:
    """Games from a JSONL of ``{"model_a", "model_b", "winner"}`` (Chatbot Arena: ``model_a`` |
    ``model_b`` | ``tie`` | ``tie (bothbad)``) or ``{"model_a", "model_b", "preference": y}`` rows."""
    models: list[str] = []
    first, second, outcome = [], [], []
    for where, row in read_rows(path, key="--judgments"):
        try:
            a, b = str(row["model_a"]), str(row["model_b"])
        except KeyError:
            raise DataError(f"{where}: needs 'model_a' and 'model_b'") from None
        if "preference" in row:
            try:
                y = float(row["preference"])
            except (TypeError, ValueError):  # not a number: the range check below names it
                y = float("nan")
        elif "winner" in row:
            winner = str(row["winner"])
            y = {"model_a": 1.0, "model_b": 0.0}.get(winner, 0.5 if winner.startswith("tie") else float("nan"))
            if winner in (a, b) and winner not in ("model_a", "model_b"):
                y = 1.0 if winner == a else 0.0
        else:
            raise DataError(f"{where}: needs 'winner' (model_a | model_b | tie) or 'preference' (0..1)")
        if not 0.0 <= y <= 1.0:
            raise DataError(f"{where}: winner/preference {row.get('winner', row.get('preference'))!r} is not "
                            "model_a, model_b, tie or a number in [0, 1]")
        if a == b:
            raise DataError(f"{where}: a model cannot play itself ({a})")
        for name in (a, b):
            if name not in models:
                models.append(name)
        first.append(models.index(a))
        second.append(models.index(b))
        outcome.append(y)
    if not outcome:
        raise DataError(f"--judgments {path}: no judgments")
    return models, first, second, outcome


def judge_all_pairs(models: list[str], prompts: list[list[dict]], answers: dict[str, list[str]], judge: Any
                    ) -> tuple[list[int], list[int], list[float], list[dict]]:
    """Every pair of models on every prompt; reward models score each answer once."""
    first, second, outcome, rows = [], [], [], []
    scores = {m: judge.score(prompts, answers[m]) for m in models} if hasattr(judge, "score") else None
    for i, j in itertools.combinations(range(len(models)), 2):
        a, b = models[i], models[j]
        if scores is not None:
            y = judges.outcome_from_scores(scores[a], scores[b])
        else:
            y = judge.compare(prompts, answers[a], answers[b])
        for q, ya, x, z in zip(prompts, y, answers[a], answers[b]):
            first.append(i)
            second.append(j)
            outcome.append(float(ya))
            rows.append({"prompt": last_user_text(q), "model_a": a, "model_b": b, "completion_a": x,
                         "completion_b": z, "preference": float(ya)})
    return first, second, outcome, rows


def plot_ratings(table: list[ratings.Rating], path: Path, title: str) -> None:
    """Ratings with their intervals as a horizontal error-bar chart, best on top."""
    from alignkit.api import pyplot

    plt = pyplot()
    rows = list(reversed(table))
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.5 * len(rows)))
    y = list(range(len(rows)))
    values = [r.rating for r in rows]
    finite = all(np.isfinite([r.ci_low for r in rows] + [r.ci_high for r in rows]))
    if finite:
        ax.errorbar(values, y, xerr=[[r.rating - r.ci_low for r in rows], [r.ci_high - r.rating for r in rows]],
                    fmt="o", capsize=4)
    else:
        ax.plot(values, y, "o")
    ax.set_yticks(y, [r.model if len(r.model) <= 40 else "…" + r.model[-39:] for r in rows])
    ax.set_xlabel("Elo rating (Bradley-Terry MLE), 95% bootstrap interval")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def eval_elo(args: argparse.Namespace) -> int:
    if bool(args.models) == bool(args.judgments):
        raise ConfigError("eval elo: pass either --models A B ... (with --prompts and --judge) or --judgments FILE")
    out = results.output_dir(args.out, "elo")
    if args.judgments:
        models, first, second, outcome = read_judgments(args.judgments)
        source: dict[str, Any] = {"judgments": args.judgments}
    else:
        if len(args.models) < 2 or len(set(args.models)) != len(args.models):
            raise ConfigError("--models: give at least two different models")
        if not args.prompts or not args.judge:
            raise ConfigError("--models needs --prompts FILE and --judge reward_model:<dir>|judge:<model>")
        judges.check_judge(args.judge)  # before any generation
        models = list(args.models)
        prompts = generation.read_prompts(args.prompts, data_format=args.format, limit=args.n)
        options = _options(args)
        answers = {m: _answers(m, prompts, options, out) for m in models}
        judge = judges.build_judge(args.judge, batch_size=args.batch_size)
        first, second, outcome, rows = judge_all_pairs(models, prompts, answers, judge)
        results.write_jsonl(out / "judgments.jsonl", rows)
        source = {"prompts": args.prompts, "judge": args.judge, "generation": vars(options)}
    if args.anchor is not None and args.anchor not in models:
        raise ConfigError(f"--anchor {args.anchor!r}: not one of the rated models {models}")
    table = ratings.rate(models, first, second, outcome, anchor=args.anchor, anchor_rating=args.anchor_rating,
                         l2=args.l2, rounds=args.rounds, seed=args.seed)
    plot_path = out / "elo.png"
    plot_ratings(table, plot_path, f"{len(outcome)} pairwise judgments")
    anchor_text = args.anchor or "mean"
    results.write_json(out / "results.json", {
        "command": "eval elo", **source, "games": len(outcome), "anchor": anchor_text,
        "anchor_rating": args.anchor_rating, "l2": args.l2, "bootstrap_rounds": args.rounds, "seed": args.seed,
        "ratings": [vars(r) for r in table]})
    print(f"Bradley-Terry ratings, Elo scale ({len(outcome)} judgments; {anchor_text} = {args.anchor_rating:g}; "
          f"95% bootstrap intervals, {args.rounds} rounds)")
    print(results.table(("rank", "model", "rating", "95% CI", "games", "score"),
                        [(i + 1, r.model, round(r.rating, 1), f"[{r.ci_low:.1f}, {r.ci_high:.1f}]", int(r.games),
                          round(r.score, 3)) for i, r in enumerate(table)]))
    print(f"  plot         {plot_path}")
    print(f"  results      {out / 'results.json'}")
    return 0


# ---------------------------------------------------------------------------- entry points
def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars only (no "Loading weights")


def eval_main(argv: list[str]) -> int:
    """Evaluate: reward-model accuracy, win-rate against a baseline, Elo ratings of several models."""
    parser = argparse.ArgumentParser(prog="alignkit eval", description=eval_main.__doc__)
    sub = parser.add_subparsers(dest="kind", required=True)

    rm = sub.add_parser("rm", help="reward-model accuracy (Wilson CI) and margin on a pairwise file")
    rm.add_argument("--model", required=True, help="a reward-model run folder (method=reward_model), its final/ "
                                                   "or a checkpoint (LoRA ones too)")
    rm.add_argument("--data", required=True, help="pairwise data file")
    rm.add_argument("--format", default="auto", help="data format (default: inferred; pairwise, hh_rlhf, ...)")
    rm.add_argument("--n", type=int, help="use only the first N pairs")
    rm.add_argument("--attribute", help="which head output is the reward (multi-attribute models)")
    rm.add_argument("--batch-size", type=int, default=8)
    rm.add_argument("--max-length", type=int, default=None,
                    help="token cap on prompt + answer (default: the reward model's saved data.max_length, else 1024)")
    rm.add_argument("--system", default=None,
                    help="system prompt (default: the one the reward model was trained with; '' for none)")
    rm.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                    help="encode with the chat template or as plain text (default: as the reward model was trained)")
    rm.add_argument("--out", help="output folder (default runs/eval/rm-<time>)")

    wr = sub.add_parser("winrate", help="win-rate (and length-controlled win-rate) of a policy against a baseline")
    wr.add_argument("--policy", required=True, help="model, run folder, checkpoint, or JSONL of answers")
    wr.add_argument("--baseline", required=True, help="model, run folder, checkpoint, or JSONL of answers")
    _prompt_args(wr)
    wr.add_argument("--judge", required=True, help="reward_model:<run folder> | judge:<model>")
    wr.add_argument("--rounds", type=int, default=1000, help="bootstrap resamples for the LC interval")
    wr.add_argument("--out", help="output folder (default runs/eval/winrate-<time>)")
    _generation_args(wr)

    elo = sub.add_parser("elo", help="Bradley-Terry / Elo ratings of several models with bootstrap intervals")
    elo.add_argument("--models", nargs="+", help="models, run folders, checkpoints or JSONL answer files")
    elo.add_argument("--judgments", help="JSONL of pairwise judgments (model_a, model_b, winner | preference)")
    _prompt_args(elo, required=False)
    elo.add_argument("--judge", help="reward_model:<run folder> | judge:<model>")
    elo.add_argument("--anchor", help="model pinned at --anchor-rating (default: the mean rating is)")
    elo.add_argument("--anchor-rating", type=float, default=1000.0)
    elo.add_argument("--l2", type=float, default=1e-2, help="weak Gaussian prior on strengths (0: plain MLE)")
    elo.add_argument("--rounds", type=int, default=1000, help="bootstrap resamples of the judgments")
    elo.add_argument("--out", help="output folder (default runs/eval/elo-<time>)")
    _generation_args(elo)

    args = parser.parse_args(argv)
    _quiet_transformers()
    if getattr(args, "n", None) is not None and args.n < 1:
        raise ConfigError("--n must be >= 1")
    return {"rm": eval_rm, "winrate": eval_winrate, "elo": eval_elo}[args.kind](args)


def generate_main(argv: list[str]) -> int:
    """Generate answers of any model or checkpoint to a prompt file, as JSONL."""
    parser = argparse.ArgumentParser(prog="alignkit generate", description=generate_main.__doc__)
    parser.add_argument("--model", default="smollm2", help="smollm2 | tiny | run folder | checkpoint | HF folder")
    _prompt_args(parser)
    parser.add_argument("--out", required=True, help="output JSONL: {prompt, messages, completion, model} rows")
    _generation_args(parser)
    args = parser.parse_args(argv)
    _quiet_transformers()
    prompts = generation.read_prompts(args.prompts, data_format=args.format, limit=args.n)
    if generation.is_outputs_file(args.model):
        raise ConfigError(f"--model {args.model}: a file of answers, not a model")
    answers, reasons = generation.answers_for(args.model, prompts, _options(args))
    generation.write_answers(Path(args.out), prompts, answers, args.model, reasons)
    print(f"alignkit: {len(answers)} answers of {args.model} written to {args.out}")
    _say_notes(answers, reasons, args.model)
    return 0
