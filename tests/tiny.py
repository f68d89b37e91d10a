"""Tiny random Hugging Face model folders of several architectures, for tests (nothing downloaded).

Each folder holds a randomly initialised causal LM (2 layers, hidden 64) and SmolLM2's bundled
tokenizer, saved with ``save_pretrained`` so that it loads like any user's model folder
(``model.path=<folder>``). Options reproduce what real releases ship: dropout in ``config.json``,
a ``generation_config.json`` with its own processors or end ids, a tokenizer that prepends BOS.

    from tiny import tiny_model_folder
    folder = tiny_model_folder(tmp_path / "gemma", "gemma2")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

BUNDLED_TOKENIZER = Path(__file__).resolve().parents[1] / "core" / "assets" / "tokenizers" / "smollm2"

#: Architecture -> (config class, model class, arch-specific config fields).
ARCHITECTURES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"final_logit_softcapping": 30.0, "head_dim": 16,
                                                      "query_pre_attn_scalar": 16, "sliding_window": 64}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 4.0, "tie_word_embeddings": False}),
    "phi": ("PhiConfig", "PhiForCausalLM", {"tie_word_embeddings": False}),  # lm_head has a bias
    "cohere": ("CohereConfig", "CohereForCausalLM", {"logit_scale": 0.0625}),
}


def load_tokenizer(prepend_bos: bool = False) -> Any:
    """SmolLM2's tokenizer; ``prepend_bos`` makes ``tokenizer(text)`` start with ``<|endoftext|>`` (id 0)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER))
    if prepend_bos:
        from tokenizers import processors

        bos = "<|endoftext|>"
        bos_id = tokenizer.convert_tokens_to_ids(bos)
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, bos_id)])
        tokenizer.bos_token = bos
        tokenizer.add_bos_token = True
    return tokenizer


def tiny_model_folder(folder: str | Path, arch: str = "llama", *, config: dict | None = None,
                      generation_config: dict | None = None, tokenizer: Any = None, seed: int = 0,
                      eos_token: str | None = None) -> Path:
    """Write a tiny random ``arch`` causal LM and a tokenizer to ``folder`` and return it.

    Args:
        folder: where to save (created).
        arch: a key of :data:`ARCHITECTURES`.
        config: extra ``config.json`` fields (``{"attention_dropout": 0.1}``).
        generation_config: the ``generation_config.json`` to ship (None: the default one).
        tokenizer: a tokenizer to save (default: SmolLM2's bundled one).
        seed: initialisation seed.
        eos_token: the tokenizer's EOS token (e.g. ``<|endoftext|>``: turns then end with another token).
    """
    import transformers
    from transformers import GenerationConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
    if eos_token is not None:
        tokenizer.eos_token = eos_token
    config_name, model_name, arch_fields = ARCHITECTURES[arch]
    fields = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
              "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
              "pad_token_id": tokenizer.pad_token_id, **arch_fields, **(config or {})}
    cfg = getattr(transformers, config_name)(**fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, model_name)(cfg)
        if arch == "phi":  # a visible bias: random, not the zero init
            torch.nn.init.normal_(model.lm_head.bias, std=1.0)
    if generation_config is not None:
        model.generation_config = GenerationConfig(**generation_config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def read_config(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())
