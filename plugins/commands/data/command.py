"""``alignkit data inspect <path>``: what a data file reads as, before training on it.

    alignkit data inspect pairs.jsonl
    alignkit data inspect se.parquet --columns question=prompt,response_j=chosen,response_k=rejected
    alignkit data inspect hub_folder/ --kind tokens --model runs/sft-.../final --example 3

Prints the data format (inferred from the rows' fields unless ``--format`` names one), the record
kind and how many records the file gives, one record rendered as the model reads it (the chat
template applied, special tokens shown) and the token lengths of prompts, answers and whole
sequences, with how many exceed the length caps that training applies (``data.max_length``,
``data.max_prompt_length``). The options mirror the ``data`` config keys.
"""

from __future__ import annotations

import argparse
from typing import Any

from alignkit.api import ConfigError

from .inspect import InspectOptions, inspect_data


def parse_columns(text: str | None) -> dict[str, str]:
    """``question=prompt,response_j=chosen`` (or ``{question: prompt, ...}``) -> ``{"question": "prompt", ...}``."""
    if not text:
        return {}
    if text.strip().startswith("{"):
        import yaml

        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--columns {text!r}: not a mapping ({str(exc).splitlines()[0]})") from None
        if not isinstance(value, dict):
            raise ConfigError(f"--columns {text!r}: expected {{old: new, ...}}")
        return {str(k): str(v) for k, v in value.items()}
    columns: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        sep = "=" if "=" in item else ":"
        old, found, new = item.partition(sep)
        if not found or not old.strip() or not new.strip():
            raise ConfigError(f"--columns {text!r}: {item!r} is not old=new")
        columns[old.strip()] = new.strip()
    return columns


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    inspect = sub.add_parser("inspect", help="inferred format, record kind, counts, a rendered example, token lengths")
    inspect.add_argument("path", help="a data file (JSONL, JSON, CSV/TSV, Parquet, Arrow) or folder")
    inspect.add_argument("--format", default="auto", help="data format (default: inferred; alignkit ls data_formats)")
    inspect.add_argument("--columns", help="field renames, old=new,... (data.columns)")
    inspect.add_argument("--kind", help="read as this record kind (default: the format's own), e.g. tokens for SFT")
    inspect.add_argument("--model", default="smollm2",
                         help="whose tokenizer and saved encoding: smollm2 | tiny | run folder | HF folder")
    inspect.add_argument("--system-prompt", help="a system message put before every prompt (data.system_prompt)")
    inspect.add_argument("--no-chat-template", action="store_true", help="plain text (data.chat_template=false)")
    inspect.add_argument("--max-length", type=int, help="cap on prompt + answer tokens (default: data.max_length)")
    inspect.add_argument("--max-prompt-length", type=int, help="cap on prompt tokens (default: data.max_prompt_length)")
    inspect.add_argument("--example", type=int, default=1, help="which record to render (1-based)")
    inspect.add_argument("--limit", type=int, help="read only the first N rows")
    return parser


def main(argv: list[str]) -> int:
    """``alignkit data inspect <path>``: what a data file reads as."""
    args: Any = _parser().parse_args(argv)
    options = InspectOptions(format=args.format, columns=parse_columns(args.columns), kind=args.kind,
                             model=args.model, system_prompt=args.system_prompt,
                             chat_template=None if not args.no_chat_template else False,
                             max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                             example=args.example, limit=args.limit)
    print(inspect_data(args.path, options))
    return 0
