"""``alignkit chat``: talk to a model with its chat template, greedy or sampled."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import ConfigError


def resolve_model_path(name: str) -> Path | str:
    """``smollm2`` / ``tiny``, or the weights folder of a run, a checkpoint (LoRA ones too) or a HF folder.

    See :func:`alignkit.models.find_model_folder`: a run folder means its ``final/`` (or, without one,
    its newest intact checkpoint); a LoRA checkpoint is loaded as its run's base model with the
    adapter merged in.
    """
    if name in ("smollm2", "tiny"):
        return name
    from .models import find_model_folder

    return find_model_folder(name, "--model")


def load_for_chat(name: str) -> tuple[Any, Any]:
    from omegaconf import OmegaConf

    from .models import ModelConfig, load_model

    target = resolve_model_path(name)
    cfg = OmegaConf.structured(ModelConfig)
    if target == "smollm2":
        cfg.source = "smollm2"
    elif target == "tiny":
        cfg.source = "random"
    else:
        cfg.path = str(target)
    model, tokenizer = load_model(cfg)
    model.eval()
    return model, tokenizer


@torch.no_grad()
def reply(model: Any, tokenizer: Any, messages: list[dict], *, max_new_tokens: int = 256, sample: bool = False,
          temperature: float = 0.7, top_p: float = 1.0, seed: int = 0) -> str:
    """One assistant turn for ``messages`` (chat template applied, KV cache on)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generator_kwargs = {"do_sample": sample, "max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    if sample:
        torch.manual_seed(seed)
        generator_kwargs.update(temperature=temperature, top_p=top_p)
    out = model.generate(**ids, **generator_kwargs)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


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
    names a method that conditions prompts (``MethodSpec.condition``, e.g. ``method=steerlm``).
    """
    from omegaconf import OmegaConf

    from .models import find_run_config
    from .plugin_manager import get_manager

    values = parse_key_values(attributes)
    config = find_run_config(model)
    if config is None:
        raise ConfigError(f"--attributes needs a run folder with config.yaml; --model {model} has none")
    cfg = OmegaConf.load(config)
    spec = get_manager().registry.get("methods", cfg.method.name, where=f"{config}: method")
    if spec.condition is None:
        raise ConfigError(f"--attributes: method={cfg.method.name} of {config.parent} does not condition prompts")

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
    parser.add_argument("--system", help="a system message")
    parser.add_argument("--attributes", help="conditioning values for a run whose method conditions prompts, "
                                             "e.g. SteerLM: --attributes verbosity=0,helpfulness=4")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    condition = prompt_conditioner(args.model, args.attributes) if args.attributes else (lambda messages: messages)
    model, tokenizer = load_for_chat(args.model)
    history: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    options = dict(max_new_tokens=args.max_new_tokens, sample=args.sample, temperature=args.temperature,
                   top_p=args.top_p, seed=args.seed)
    if args.prompt is not None:
        print(reply(model, tokenizer, condition([*history, {"role": "user", "content": args.prompt}]), **options))
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
        history.append({"role": "assistant", "content": answer})
        print(f"assistant> {answer}" if interactive else answer, flush=True)
