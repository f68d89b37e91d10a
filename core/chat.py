"""``alignkit chat``: talk to a model, greedy or sampled.

Prompts are encoded the way the model was trained (the encoding settings saved with it: chat
template or plain text, system prompt, prompt length; :mod:`alignkit.encoding`), decoded with exactly
the given options (nothing from the model's ``generation_config.json``) and cut at the first
end-of-turn id (:mod:`alignkit.generation`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

import torch

from .encoding import EncodingSettings, report, saved_encoding
from .errors import ConfigError
from .generation import Completion, SamplingSettings, end_token_ids, private_rng
from .generation import sample as sample_completions  # ``reply`` has a ``sample`` flag
from .models import load_for_inference

#: Prompt cap for a model without saved encoding settings: none in practice (the whole conversation).
UNCAPPED = 1 << 30

#: Shown in place of an answer without text: greedy decoding whose first token ends the turn prints
#: nothing otherwise, which reads as a hang or a crash.
EMPTY_COMPLETION = "(empty completion: the model ended its turn without any text)"


#: Said after an answer the repetition guard stopped.
REPETITION_STOPPED = ("(stopped: the answer began repeating itself; one copy is shown. --repetition-guard 0 lets "
                      "it run to --max-new-tokens)")


def shown(answer: str | Completion) -> str:
    """``answer`` as printed for a user: its text, :data:`EMPTY_COMPLETION` when it has none, and
    :data:`REPETITION_STOPPED` on a line of its own when the repetition guard stopped it."""
    text = answer if isinstance(answer, str) else answer.text.strip()
    stopped = not isinstance(answer, str) and answer.finish_reason == "repetition"
    return (text if text.strip() else EMPTY_COMPLETION) + (f"\n{REPETITION_STOPPED}" if stopped else "")


def empty_note(answers: Sequence[str], model: str) -> str | None:
    """One line saying how many of ``model``'s answers are empty (None when none is)."""
    empty = sum(1 for answer in answers if not answer.strip())
    if not empty:
        return None
    return (f"alignkit: {empty} of {len(answers)} answers of {model} are empty (the model ended its turn "
            "without any text)")


def chat_encoding(tokenizer: Any, saved: EncodingSettings | None) -> EncodingSettings:
    """The model's saved encoding settings, or (none saved) its chat template if any, no system prompt, no cap."""
    return saved if saved is not None else EncodingSettings.defaults(tokenizer, max_length=UNCAPPED + 1,
                                                                      max_prompt_length=UNCAPPED)


class TokenBar:
    """A progress bar over one answer's tokens (total: ``max_new_tokens``), fed by ``generate`` as a
    ``transformers`` streamer: its first ``put`` is the prompt, each later one a new token."""

    def __init__(self, total: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="answer", unit="tok", leave=False, dynamic_ncols=True)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.bar.update(int(value.numel()))

    def end(self) -> None:
        self.bar.close()


@torch.no_grad()
def reply(model: Any, tokenizer: Any, messages: list[dict], *, max_new_tokens: int = 256, sample: bool = False,
          temperature: float = 0.7, top_p: float = 1.0, seed: int = 0, encoding: EncodingSettings | None = None,
          end_ids: frozenset[int] | None = None, repetition_guard: int = 3, progress: bool = False) -> Completion:
    """One assistant turn for ``messages``: encoded per ``encoding``, stopped and cut at the end of the turn
    (or where it began repeating itself).

    Args:
        model, tokenizer: the model that answers.
        messages: the conversation so far.
        max_new_tokens: cap on the answer.
        sample: sample (temperature, top-p) instead of greedy decoding.
        temperature, top_p: sampling options.
        seed: seed of a private random stream (the global RNG is left as it was).
        encoding: how prompts become tokens (default: :func:`chat_encoding` of no saved settings).
        end_ids: ids that end the turn (default: :func:`alignkit.generation.end_token_ids`).
        repetition_guard: stop once a passage has come this many times in a row, keeping one copy
            (``finish_reason`` ``repetition``; :func:`alignkit.generation.repetition_cut`); 0: off.
        progress: show a bar over the answer's tokens (:class:`TokenBar`, on stderr).

    Returns:
        The :class:`~alignkit.generation.Completion` (``.text``, ``.finish_reason``).
    """
    encoder = (encoding or chat_encoding(tokenizer, None)).encoder(tokenizer)
    settings = SamplingSettings(max_new_tokens=max_new_tokens, greedy=not sample, temperature=temperature, top_p=top_p,
                                repetition_guard=repetition_guard)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with private_rng(seed, next(model.parameters()).device):
        cut = sample_completions(model, [encoder.prompt_ids(messages)], settings,
                                 end_ids=end_ids if end_ids is not None else end_token_ids(tokenizer, model),
                                 pad_id=pad_id, tokenizer=tokenizer,
                                 streamer=TokenBar(max_new_tokens) if progress else None)
    return cut[0]


def parse_key_values(text: str) -> dict[str, str]:
    """``"verbosity=0,helpfulness=4"`` (or ``name:value`` pairs) -> ``{"verbosity": "0", "helpfulness": "4"}``."""
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        sep = "=" if "=" in item else ":"
        key, found, value = item.partition(sep)
        if not found or not key.strip() or not value.strip():
            raise ConfigError(f"--attributes {text!r}: {item!r} is not name=value")
        values[key.strip()] = value.strip()
    return values


def prompt_conditioner(model: str, attributes: str) -> Callable[[list[dict]], list[dict]]:
    """How ``--attributes`` conditions each prompt: the trained run's method's ``condition``.

    ``model`` must be a run folder (or its ``final/`` / a checkpoint inside it) whose ``config.yaml``
    names a method that conditions prompts (``MethodSpec.condition``, e.g. ``method=steerlm``), or a
    model folder whose saved encoding settings record that conditioning (a ``final/`` copied elsewhere).
    """
    from omegaconf import OmegaConf

    from .models import find_run_config
    from .plugin_manager import get_manager

    values = parse_key_values(attributes)
    config = find_run_config(model)
    saved = saved_encoding(model) if config is None else None
    if config is not None:
        cfg, where = OmegaConf.load(config), str(config)
    elif saved is not None and saved.conditioning:
        cfg, where = OmegaConf.create({"method": saved.conditioning["config"]}), f"{model} (saved encoding)"
    else:
        raise ConfigError(f"--attributes needs a run folder with config.yaml; --model {model} has none")
    spec = get_manager().registry.get("methods", cfg.method.name, where=f"{where}: method")
    if spec.condition is None:
        raise ConfigError(f"--attributes: method={cfg.method.name} of {where} does not condition prompts")

    def condition(messages: list[dict]) -> list[dict]:
        try:
            return spec.condition(cfg, messages, values, fill_defaults=True)
        except ValueError as exc:
            raise ConfigError(f"--attributes: {exc}") from None

    condition([{"role": "user", "content": ""}])  # bad values fail here, before the model loads
    return condition


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignkit chat", description=__doc__)
    parser.add_argument("--model", default="smollm2", help="smollm2 | tiny | run folder | checkpoint | HF folder")
    parser.add_argument("--prompt", help="one message; omit to chat interactively (empty line or Ctrl-D quits)")
    parser.add_argument("--system", help="a system message (default: the one the model was trained with; '' for none)")
    parser.add_argument("--attributes", help="conditioning values for a run whose method conditions prompts, "
                                             "e.g. SteerLM: --attributes verbosity=0,helpfulness=4")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--repetition-guard", type=int, default=3, metavar="N",
                        help="stop an answer once a passage repeats N times in a row, keep one copy and say so "
                             "(default 3; 0: off)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repetition_guard < 0 or args.repetition_guard == 1:
        raise ConfigError(f"--repetition-guard {args.repetition_guard}: 0 (off) or a number of repeats >= 2")
    condition = prompt_conditioner(args.model, args.attributes) if args.attributes else (lambda messages: messages)
    model, tokenizer = load_for_inference(args.model)
    saved = saved_encoding(args.model)
    encoding = chat_encoding(tokenizer, saved)
    if saved is not None:  # an explicit --system that differs from the trained one is used and reported
        encoding = encoding.with_overrides({"system_prompt": args.system}, source="chat --system", where=args.model,
                                           log=report)
    history: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    options = dict(max_new_tokens=args.max_new_tokens, sample=args.sample, temperature=args.temperature,
                   top_p=args.top_p, seed=args.seed, encoding=encoding, end_ids=end_token_ids(tokenizer, model),
                   repetition_guard=args.repetition_guard, progress=True)
    if args.prompt is not None:
        print(shown(reply(model, tokenizer, condition([*history, {"role": "user", "content": args.prompt}]), **options)))
        return 0
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or not line.strip():
            return 0
        history.append({"role": "user", "content": line.strip()})
        answer = reply(model, tokenizer, condition(history), **options)
        history.append({"role": "assistant", "content": answer.text.strip()})
        print(f"assistant> {shown(answer)}" if interactive else shown(answer), flush=True)
