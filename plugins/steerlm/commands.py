"""``alignkit steerlm annotate | label | measure``: the SteerLM data pipeline and its check.

- ``annotate``: an attribute-prediction model (``method=reward_model loss=mse`` with one head output per
  attribute) scores every answer of a dataset; its scores, rounded and clipped to the range, become the
  rows' ``attributes`` (the raw scores are kept as ``scores``).
- ``label``: one attribute from a function of each answer, binned into the range by quantiles (or
  rounded): ``--from-length`` (verbosity from word count) or ``--function package.module:fn``.
- ``measure``: generate held-out answers from a steerlm run at several values of one attribute and
  report each mean answer length and the paired difference, with 95% intervals.

Outputs are JSONL in ``data.format=steerlm`` (``prompt``, ``completion``, ``attributes``), written
atomically (temporary file, then rename).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable

import torch

from alignkit.api import (
    AlignkitError,
    ConfigError,
    DataError,
    EncodingSettings,
    RolloutBatch,
    SamplingSettings,
    end_token_ids,
    load_callable,
    prompt_encoding,
    sample,
    saved_encoding,
)

from .attributes import AttributeSchema
from .labels import MEASURES, quantile_levels

SUBCOMMANDS = ("annotate", "label", "measure")

#: ``measure``'s prompt cap for a model without saved encoding settings.
DEFAULT_PROMPT_TOKENS = 384


# ----------------------------------------------------------------------------- shared helpers
def read_records(path: str, fmt: str, limit: int | None = None) -> list[dict]:
    """Rows of ``path`` parsed by data format ``fmt`` into prompt/completion records."""
    from omegaconf import OmegaConf

    from alignkit.api import DataConfig, get_registry, load_records

    cfg = OmegaConf.structured(DataConfig)
    cfg.format = fmt
    return load_records(cfg, "tokens", get_registry(), path=path, key="--data", limit=limit)


def answer_text(record: dict) -> str:
    return "\n".join(m["content"] for m in record["completion"])


def output_row(record: dict, attributes: dict[str, int], scores: dict[str, float] | None = None) -> dict:
    """A ``data.format=steerlm`` row; an answer that is one assistant message is written as a string."""
    completion: Any = record["completion"]
    if len(completion) == 1 and completion[0]["role"] == "assistant":
        completion = completion[0]["content"]
    row = {"prompt": record["prompt"], "completion": completion, "attributes": attributes}
    if scores is not None:
        row["scores"] = scores
    return row


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows as JSONL to ``path`` through a temporary file in the same folder; returns the count."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def _schema(names: list[str], args: argparse.Namespace) -> AttributeSchema:
    try:
        return AttributeSchema(names=tuple(names), min_value=args.min_value, max_value=args.max_value)
    except ValueError as exc:
        raise ConfigError(f"--min-value/--max-value or attribute names: {exc}") from None


def _progress(iterable: Any, **kwargs: Any) -> Any:
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def _common(parser: argparse.ArgumentParser, *, out: bool = True, value_range: bool = True) -> None:
    parser.add_argument("--data", required=True, help="input file or folder (JSONL, JSON, CSV, Parquet, Arrow, "
                                                      "save_to_disk folder)")
    parser.add_argument("--format", default="auto",
                        help="its data format (default: inferred from its fields; alignkit ls data_formats), "
                             "e.g. hh_rlhf, chat, steerlm")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N rows")
    if out:
        parser.add_argument("--out", required=True, help="output JSONL (data.format=steerlm)")
    if value_range:
        parser.add_argument("--min-value", type=int, default=0, help="lowest attribute value (default 0)")
        parser.add_argument("--max-value", type=int, default=4, help="highest attribute value (default 4)")


# ----------------------------------------------------------------------------- annotate
def annotate(args: argparse.Namespace) -> int:
    """Label answers with the attribute values an attribute-prediction model predicts."""
    from omegaconf import OmegaConf

    from alignkit.api import get_registry

    spec = get_registry().get("scorers", "reward_model", where="steerlm annotate")
    cfg = OmegaConf.structured(spec.schema)
    cfg.path, cfg.all_attributes = args.predictor, True
    cfg.batch_size, cfg.max_length = args.batch_size, args.max_length
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    # A scorer's build reads only the device from its context outside a training run.
    scorer = spec.build(SimpleNamespace(device=device, log=print), cfg)
    schema = _schema(list(scorer.attributes), args)
    records = read_records(args.data, args.format, args.limit)

    def rows() -> Iterable[dict]:
        for start in _progress(range(0, len(records), args.batch_size), desc="annotate", unit="batch"):
            chunk = records[start:start + args.batch_size]
            scores = scorer(RolloutBatch.from_texts([r["prompt"] for r in chunk], [answer_text(r) for r in chunk]))
            for record, row in zip(chunk, scores.tolist()):  # row: A floats
                raw = dict(zip(schema.names, row))
                predicted = {name: schema.quantize(value) for name, value in raw.items()}
                kept = dict(record.get("attributes") or {}) if args.keep_existing else {}
                yield output_row(record, {**predicted, **kept}, {k: round(v, 4) for k, v in raw.items()})

    count = write_jsonl_atomic(args.out, rows())
    print(json.dumps({"annotated": count, "attributes": list(schema.names), "out": str(args.out)}))
    return 0


# ----------------------------------------------------------------------------- label
def label(args: argparse.Namespace) -> int:
    """Label one attribute from a function of each answer (length, or any ``module:function``)."""
    if bool(args.from_length) == bool(args.function):
        raise ConfigError("steerlm label: pass exactly one of --from-length or --function package.module:fn")
    measure = MEASURES[args.unit] if args.from_length else load_callable(args.function, key="--function")
    schema = _schema([args.attribute], args)
    records = read_records(args.data, args.format, args.limit)
    values = []
    for record in records:
        value = measure(record)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise DataError(f"{record['_where']}: the labelling function returned {type(value).__name__}, not a number")
        values.append(float(value))
    binning = args.binning or ("quantile" if args.from_length else "round")
    thresholds = None
    try:
        if binning == "quantile":
            given = [float(t) for t in args.thresholds.split(",")] if args.thresholds else None
            levels, thresholds = quantile_levels(values, schema, given)
        else:
            levels = [schema.quantize(v) for v in values]
    except ValueError as exc:
        raise ConfigError(f"steerlm label: {exc}") from None
    # The level is also written as a regression target ("scores"), so the same file trains the
    # attribute predictor (method=reward_model loss=mse data.format=scored) and the SteerLM SFT.
    rows = (output_row(r, {**(r.get("attributes") or {}), args.attribute: level},
                       {**(r.get("scores") or {}), args.attribute: float(level)}) for r, level in zip(records, levels))
    count = write_jsonl_atomic(args.out, rows)
    histogram = {str(v): levels.count(v) for v in range(schema.min_value, schema.max_value + 1)}
    print(json.dumps({"labelled": count, "attribute": args.attribute, "binning": binning,
                      "thresholds": thresholds, "counts": histogram, "out": str(args.out)}))
    return 0


# ----------------------------------------------------------------------------- measure
def _run_config(model: str) -> Any:
    from omegaconf import OmegaConf

    path = Path(model).expanduser()
    for folder in (path, path.parent):
        if (folder / "config.yaml").exists():
            return OmegaConf.load(folder / "config.yaml")
    raise ConfigError(f"--model {model}: no config.yaml beside it; pass a run folder trained with method=steerlm")


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, prompts: list[list[dict]], *, max_new_tokens: int,
                     batch_size: int, max_prompt_tokens: int | None, desc: str,
                     repetition_penalty: float = 1.0, encoding: EncodingSettings | None = None,
                     where: str = "the model") -> list[tuple[str, int]]:
    """Greedy answers (text, generated tokens before the end of turn) for chat prompts, batched.

    Prompts are encoded as the model was trained (``encoding``: its saved
    :class:`alignkit.encoding.EncodingSettings`, None for the defaults), keeping their last
    ``max_prompt_tokens`` tokens (None: the saved cap, else 384). Decoding is greedy with nothing but
    the explicit ``repetition_penalty`` (the model's ``generation_config.json`` adds nothing) and stops
    at every end-of-turn id (:func:`alignkit.generation.end_token_ids`).

    ``repetition_penalty`` > 1 is the CTRL penalty (Keskar et al. 2019) transformers applies: the logit
    of every token already in the sequence is divided by it (multiplied when negative).
    """
    settings = prompt_encoding(tokenizer, encoding, max_prompt_tokens, default_cap=DEFAULT_PROMPT_TOKENS, where=where,
                               source=f"--max-prompt-tokens {max_prompt_tokens}")
    encoder = settings.encoder(tokenizer)
    encoded = [encoder.prompt_ids(p) for p in prompts]
    decoding = SamplingSettings(max_new_tokens=max_new_tokens, greedy=True, repetition_penalty=repetition_penalty)
    end_ids = end_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[tuple[str, int]] = []
    for start in _progress(range(0, len(encoded), batch_size), desc=desc, unit="batch"):
        cut = sample(model, encoded[start:start + batch_size], decoding, end_ids=end_ids, pad_id=pad_id,
                     tokenizer=tokenizer)
        out += [(c.text.strip(), len(c.content)) for c in cut]
    return out


def repeated_ngrams(text: str, n: int = 4) -> float:
    """Share of an answer's word n-grams that repeat an earlier one: ``1 - distinct / total``.

    0 for an answer without repetition (or shorter than ``n`` words), close to 1 for a loop. Length
    alone cannot tell a longer answer from a small model repeating itself until the token limit.
    """
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def _summary(words: torch.Tensor, tokens: torch.Tensor) -> dict[str, float]:
    from alignkit.api import mean_interval

    w, w_low, w_high = mean_interval(words)
    t, t_low, t_high = mean_interval(tokens)
    return {"words": w, "words_ci_low": w_low, "words_ci_high": w_high,
            "tokens": t, "tokens_ci_low": t_low, "tokens_ci_high": t_high, "n": float(words.numel())}


def _quality(answers: list[tuple[str, int]], max_new_tokens: int) -> dict[str, float]:
    """Degeneration checks beside the length: repeated 4-grams (mean, 95% interval), answers cut by the limit."""
    from alignkit.api import mean_interval

    repeated, low, high = mean_interval(torch.tensor([repeated_ngrams(a) for a, _ in answers]))  # (N,)
    return {"repeated_4grams": repeated, "repeated_4grams_ci_low": low, "repeated_4grams_ci_high": high,
            "at_token_limit": sum(n >= max_new_tokens for _, n in answers) / max(len(answers), 1)}


def measure(args: argparse.Namespace) -> int:
    """Mean held-out answer length at each value of one attribute, the paired difference, 95% intervals."""
    from alignkit.api import get_registry, load_for_inference

    run_cfg = _run_config(args.model)
    spec = get_registry().get("methods", run_cfg.method.name, where=f"{args.model}: method")
    if spec.condition is None:
        raise ConfigError(f"--model {args.model}: method={run_cfg.method.name} does not condition prompts")
    try:
        values = [int(v) for v in args.values.split(",")]
    except ValueError:
        raise ConfigError(f"--values {args.values!r}: expected integers such as 0,4") from None
    if len(values) < 2:
        raise ConfigError("--values: give at least two values to compare, e.g. 0,4")
    records = read_records(args.data, args.format, args.limit)
    prompts = [r["prompt"] for r in records]
    if not args.repetition_penalty > 0:
        raise ConfigError(f"--repetition-penalty {args.repetition_penalty}: must be > 0 (1 = none)")
    options = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, max_prompt_tokens=args.max_prompt_tokens,
                   repetition_penalty=args.repetition_penalty)
    decoding = "greedy" if args.repetition_penalty == 1.0 else f"greedy, repetition penalty {args.repetition_penalty:g}"
    results: dict[str, Any] = {"model": str(args.model), "data": str(args.data), "attribute": args.attribute,
                               "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "decoding": decoding,
                               "conditions": {}}
    samples: dict[str, list[str]] = {}
    lengths: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    low, high = f"{args.attribute}={values[0]}", f"{args.attribute}={values[-1]}"
    b_low, b_high = f"baseline:{args.baseline}:{low}", f"baseline:{args.baseline}:{high}"

    def save() -> None:
        # Rewritten after every condition, so a long measurement that is stopped keeps what it has.
        for key, (a, b) in {"paired_difference": (low, high), "baseline_paired_difference": (b_low, b_high)}.items():
            if a in lengths and b in lengths:
                results[key] = {"of": f"{b} minus {a}",
                                **_summary(lengths[b][0] - lengths[a][0], lengths[b][1] - lengths[a][1])}
        results["samples"] = samples
        text = json.dumps(results, indent=1)
        if args.out:
            out = Path(args.out).expanduser()
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, out)

    def record(label: str, answers: list[tuple[str, int]]) -> None:
        words = torch.tensor([float(len(a.split())) for a, _ in answers])  # (N,)
        tokens = torch.tensor([float(n) for _, n in answers])  # (N,)
        lengths[label] = (words, tokens)
        results["conditions"][label] = {**_summary(words, tokens), **_quality(answers, args.max_new_tokens)}
        samples[label] = [a for a, _ in answers]
        save()

    conditioned: dict[int, list[list[dict]]] = {}
    for value in values:
        try:
            conditioned[value] = [spec.condition(run_cfg, p, {args.attribute: value}, fill_defaults=True) for p in prompts]
        except ValueError as exc:
            raise ConfigError(f"--attribute {args.attribute}={value}: {exc}") from None
    model, tokenizer = load_for_inference(args.model)
    # Each model reads prompts in the form it was trained on (chat template, system prompt, prompt cap).
    trained = dict(options, encoding=saved_encoding(args.model), where=str(args.model))
    for value in values:
        record(f"{args.attribute}={value}", generate_answers(model, tokenizer, conditioned[value],
                                                             desc=f"{args.attribute}={value}", **trained))
    del model
    if args.baseline:
        base, base_tok = load_for_inference(args.baseline)
        baseline = dict(options, encoding=saved_encoding(args.baseline), where=str(args.baseline))
        record(f"baseline:{args.baseline}", generate_answers(base, base_tok, prompts, desc="baseline", **baseline))
        if args.baseline_conditioned:
            # Control: does the untrained model already follow the attribute line?
            for value in (values[0], values[-1]):
                record(f"baseline:{args.baseline}:{args.attribute}={value}",
                       generate_answers(base, base_tok, conditioned[value], desc=f"baseline {value}", **baseline))
    save()
    print(measure_table(results))
    if args.out:
        print(f"results and every answer: {args.out}")
    return 0


def measure_table(results: dict[str, Any]) -> str:
    """The measurement as a Markdown table: one row per condition, then the paired differences."""
    lines = [f"n = {results['prompts']} prompts, {results['decoding']}, max_new_tokens {results['max_new_tokens']}", "",
             "| condition | mean words [95% CI] | mean tokens [95% CI] | repeated 4-grams [95% CI] | at token limit |",
             "|---|---|---|---|---|"]

    def interval(row: dict[str, float], key: str, digits: int = 1) -> str:
        return f"{row[key]:.{digits}f} [{row[key + '_ci_low']:.{digits}f}, {row[key + '_ci_high']:.{digits}f}]"

    for name, row in results["conditions"].items():
        lines.append(f"| {name} | {interval(row, 'words')} | {interval(row, 'tokens')} | "
                     f"{interval(row, 'repeated_4grams', 2)} | {row['at_token_limit']:.0%} |")
    for key in ("paired_difference", "baseline_paired_difference"):
        if key in results:
            row = results[key]
            lines.append(f"| {row['of']} (paired) | {interval(row, 'words')} | {interval(row, 'tokens')} | | |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- entry
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit steerlm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("annotate", help="label answers with a trained attribute-prediction model")
    p.add_argument("--predictor", required=True, help="run folder of method=reward_model loss=mse (or its final/)")
    _common(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=None,
                   help="token cap on prompt + answer when scoring (default: the predictor's saved data.max_length, else 1024)")
    p.add_argument("--keep-existing", action="store_true", help="keep attribute values the input rows already have")
    p.add_argument("--cpu", action="store_true", help="score on the CPU even when a GPU is present")
    p.set_defaults(run=annotate)

    p = sub.add_parser("label", help="label one attribute from a function of each answer")
    _common(p)
    p.add_argument("--attribute", required=True, help="the attribute to label, e.g. verbosity")
    p.add_argument("--from-length", action="store_true", help="measure each answer's length (see --unit)")
    p.add_argument("--unit", choices=sorted(MEASURES), default="words", help="length unit for --from-length")
    p.add_argument("--function", help="package.module:fn, fn(record) -> number; record has prompt/completion messages")
    p.add_argument("--binning", choices=("quantile", "round"),
                   help="quantile: equal-count levels (default with --from-length); round: round and clip the value")
    p.add_argument("--thresholds", help="comma-separated ascending thresholds (from an earlier run) instead of quantiles")
    p.set_defaults(run=label)

    p = sub.add_parser("measure", help="mean held-out answer length at several values of one attribute")
    p.add_argument("--model", required=True, help="a run folder trained with method=steerlm")
    _common(p, out=False, value_range=False)
    p.add_argument("--attribute", default="verbosity")
    p.add_argument("--values", default="0,4", help="comma-separated values; the difference is last minus first")
    p.add_argument("--baseline", help="also generate unconditioned answers from this model (e.g. smollm2)")
    p.add_argument("--baseline-conditioned", action="store_true",
                   help="also give the baseline the attribute line at the first and last value (a control)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="divide the logits of tokens already in the sequence (prompt included) by this (1 = plain greedy; e.g. 1.3)")
    p.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="keep the last N prompt tokens (default: the model's saved data.max_prompt_length, else 384)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", help="also write the results as JSON here")
    p.set_defaults(run=measure)
    return parser


def main(argv: list[str]) -> int:
    """``alignkit steerlm annotate | label | measure``."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except AlignkitError:
        raise
    except ValueError as exc:
        raise DataError(f"steerlm {args.command}: {exc}") from None
