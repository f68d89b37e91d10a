"""``alignkit chat``: talk to a model with its chat template, greedy or sampled."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError


def resolve_model_path(name: str) -> Path | str:
    """``smollm2`` / ``tiny``, a run folder (uses its ``final/``), a checkpoint, or a HF folder."""
    if name in ("smollm2", "tiny"):
        return name
    path = Path(name).expanduser()
    for candidate in (path / "final", path / "model", path):
        if (candidate / "config.json").exists():
            return candidate
    raise ModelError(f"--model {name}: not a model folder, a checkpoint or a run folder with final/")


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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignkit chat", description=__doc__)
    parser.add_argument("--model", default="smollm2", help="smollm2 | tiny | run folder | checkpoint | HF folder")
    parser.add_argument("--prompt", help="one message; omit to chat interactively (empty line or Ctrl-D quits)")
    parser.add_argument("--system", help="a system message")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, tokenizer = load_for_chat(args.model)
    history: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    options = dict(max_new_tokens=args.max_new_tokens, sample=args.sample, temperature=args.temperature,
                   top_p=args.top_p, seed=args.seed)
    if args.prompt is not None:
        print(reply(model, tokenizer, [*history, {"role": "user", "content": args.prompt}], **options))
        return 0
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or not line.strip():
            return 0
        history.append({"role": "user", "content": line.strip()})
        answer = reply(model, tokenizer, history, **options)
        history.append({"role": "assistant", "content": answer})
        print(f"assistant> {answer}" if interactive else answer, flush=True)
