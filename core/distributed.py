"""Scale-out on ``accelerate``: strategy presets (DDP, FSDP, DeepSpeed ZeRO-2/3), data sharding,
cross-process loss normalisation, gradient sync of modules outside the policy, gathered generation.

alignkit does not ship its own parallel engine. ``trainer.strategy`` picks one of accelerate's:

- ``none`` / ``ddp``: ``DistributedDataParallel`` whenever more than one process is launched (on CPU
  over gloo, on GPUs over NCCL); ``ddp`` only documents the intent.
- ``fsdp``: ``FullyShardedDataParallelPlugin`` built from ``trainer.fsdp``.
- ``deepspeed``: ``DeepSpeedPlugin`` built from ``trainer.deepspeed`` (ZeRO stage 2 or 3); needs
  ``pip install deepspeed`` (GPU only, not a dependency).

``trainer.batch_size`` is the *global* batch: with N processes each one trains on its own contiguous
slice of B/N rows of every batch (:func:`shard`), and the loss is normalised so that DDP's gradient
average equals the gradient of the full batch's loss (:func:`global_weights`)::

    L = sum_r sum_m w_{r,m} * l_{r,m} / W,   W = sum_r sum_m w_{r,m}

where ``w`` is the objective's ``weight(batch)`` (target tokens, pairs, completions) and ``l`` its
micro-batch loss (a mean over those units). Each rank back-propagates ``N * w_{r,m} / W * l_{r,m}``;
DDP divides the summed gradients by N.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch

from .errors import ConfigError
from .generation import generate_sharing_prompts

STRATEGIES = ("none", "ddp", "fsdp", "deepspeed")
FSDP_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")
FSDP_WRAP = ("TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP")
FSDP_STATE_DICT = ("FULL_STATE_DICT", "SHARDED_STATE_DICT")
OFFLOAD_DEVICES = ("none", "cpu", "nvme")


@dataclass
class FsdpConfig:
    """``trainer.fsdp``: options of accelerate's ``FullyShardedDataParallelPlugin`` (``strategy=fsdp``).

    Attributes:
        version: FSDP API, 1 (``FullyShardedDataParallel``) or 2 (``fully_shard``).
        sharding_strategy: FULL_SHARD (ZeRO-3-like) | SHARD_GRAD_OP (ZeRO-2-like) | NO_SHARD | HYBRID_SHARD.
        auto_wrap_policy: TRANSFORMER_BASED_WRAP | SIZE_BASED_WRAP | NO_WRAP.
        transformer_layer_cls: decoder-layer class to wrap (null: the model's ``_no_split_modules``).
        min_num_params: size threshold for SIZE_BASED_WRAP.
        cpu_offload: keep sharded parameters on CPU between uses.
        state_dict_type: FULL_STATE_DICT (gathered on rank 0 when saving) | SHARDED_STATE_DICT.
        activation_checkpointing: recompute activations in backward.
        use_orig_params: keep the original parameters visible to the optimizer (needed for LoRA).
        sync_module_states: broadcast rank 0's weights at wrap time.
    """

    version: int = 1
    sharding_strategy: str = "FULL_SHARD"
    auto_wrap_policy: str = "TRANSFORMER_BASED_WRAP"
    transformer_layer_cls: Optional[str] = None
    min_num_params: int = 100_000_000
    cpu_offload: bool = False
    state_dict_type: str = "FULL_STATE_DICT"
    activation_checkpointing: bool = False
    use_orig_params: bool = True
    sync_module_states: bool = True


@dataclass
class DeepSpeedConfig:
    """``trainer.deepspeed``: a DeepSpeed ZeRO config handed to accelerate's ``DeepSpeedPlugin``.

    Attributes:
        zero_stage: 0 | 1 | 2 (optimizer state + gradients sharded) | 3 (parameters sharded too).
        offload_optimizer: none | cpu | nvme.
        offload_params: none | cpu | nvme (stage 3 only).
        zero3_init: build the model directly sharded (stage 3, very large models).
        save_16bit_model: gather a 16-bit full model on rank 0 when saving under stage 3.
    """

    zero_stage: int = 2
    offload_optimizer: str = "none"
    offload_params: str = "none"
    zero3_init: bool = False
    save_16bit_model: bool = True


# ---------------------------------------------------------------------------- config
def check_trainer(tcfg: Any) -> None:
    """ConfigError for strategy settings accelerate would reject later (or silently misread)."""
    strategy = tcfg.get("strategy", "none")
    if strategy not in STRATEGIES:
        raise ConfigError(f"trainer.strategy={strategy!r}; expected one of {', '.join(STRATEGIES)}")
    fsdp, ds = tcfg.get("fsdp"), tcfg.get("deepspeed")
    if fsdp is not None:
        for key, allowed in (("sharding_strategy", FSDP_SHARDING), ("auto_wrap_policy", FSDP_WRAP),
                             ("state_dict_type", FSDP_STATE_DICT)):
            if fsdp[key] not in allowed:
                raise ConfigError(f"trainer.fsdp.{key}={fsdp[key]!r}; expected one of {', '.join(allowed)}")
        if fsdp.version not in (1, 2):
            raise ConfigError(f"trainer.fsdp.version={fsdp.version}; expected 1 or 2")
    if ds is not None:
        if ds.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"trainer.deepspeed.zero_stage={ds.zero_stage}; expected 0, 1, 2 or 3")
        for key in ("offload_optimizer", "offload_params"):
            if ds[key] not in OFFLOAD_DEVICES:
                raise ConfigError(f"trainer.deepspeed.{key}={ds[key]!r}; expected one of {', '.join(OFFLOAD_DEVICES)}")
        if ds.offload_params != "none" and ds.zero_stage != 3:
            raise ConfigError("trainer.deepspeed.offload_params needs trainer.deepspeed.zero_stage=3")


def fsdp_plugin_kwargs(tcfg: Any) -> dict[str, Any]:
    """Keyword arguments of ``accelerate.utils.FullyShardedDataParallelPlugin`` for ``trainer.fsdp``."""
    fsdp = tcfg.fsdp
    kwargs: dict[str, Any] = {
        "fsdp_version": int(fsdp.version),
        "auto_wrap_policy": fsdp.auto_wrap_policy.lower(),
        "cpu_offload": bool(fsdp.cpu_offload),
        "state_dict_type": fsdp.state_dict_type,
        "activation_checkpointing": bool(fsdp.activation_checkpointing),
        "use_orig_params": bool(fsdp.use_orig_params),
        "sync_module_states": bool(fsdp.sync_module_states),
    }
    if fsdp.version == 1:
        kwargs["sharding_strategy"] = fsdp.sharding_strategy
    else:  # FSDP2 expresses SHARD_GRAD_OP as "do not reshard after forward"
        kwargs["reshard_after_forward"] = fsdp.sharding_strategy != "SHARD_GRAD_OP"
    if fsdp.transformer_layer_cls:
        kwargs["transformer_cls_names_to_wrap"] = [fsdp.transformer_layer_cls]
    if fsdp.auto_wrap_policy == "SIZE_BASED_WRAP":
        kwargs["min_num_params"] = int(fsdp.min_num_params)
    return kwargs


def deepspeed_config(tcfg: Any, num_processes: int = 1) -> dict[str, Any]:
    """The DeepSpeed JSON config (as a dict) for ``trainer.deepspeed``; batch sizes from ``trainer``."""
    ds = tcfg.deepspeed
    zero: dict[str, Any] = {"stage": int(ds.zero_stage), "overlap_comm": True, "contiguous_gradients": True}
    if ds.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": ds.offload_optimizer, "pin_memory": True}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = bool(ds.save_16bit_model)
        if ds.offload_params != "none":
            zero["offload_param"] = {"device": ds.offload_params, "pin_memory": True}
    micro = per_process_batch(int(tcfg.batch_size), num_processes)
    return {
        "train_micro_batch_size_per_gpu": micro,
        "train_batch_size": micro * num_processes * int(tcfg.grad_accum),
        "gradient_accumulation_steps": int(tcfg.grad_accum),
        "gradient_clipping": float(tcfg.max_grad_norm) if tcfg.max_grad_norm > 0 else 0.0,
        "bf16": {"enabled": tcfg.mixed_precision == "bf16"},
        "fp16": {"enabled": tcfg.mixed_precision == "fp16"},
        "zero_optimization": zero,
    }


def accelerator_kwargs(tcfg: Any, num_processes: int = 1) -> dict[str, Any]:
    """Keyword arguments of ``accelerate.Accelerator`` for the ``trainer`` node."""
    from accelerate.utils import DistributedDataParallelKwargs

    check_trainer(tcfg)
    # Rotary caches are deterministic buffers: broadcasting them each forward would only add a
    # collective that every rank must reach the same number of times. (torch 2.13 renames the option;
    # accelerate still passes the old name.)
    warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
    # Several processes without a GPU: accelerate only sets up gloo (MULTI_CPU) when told cpu=True.
    cpu = bool(tcfg.cpu) or (num_processes > 1 and not torch.cuda.is_available())
    kwargs: dict[str, Any] = {
        "cpu": cpu, "mixed_precision": tcfg.mixed_precision,
        "kwargs_handlers": [DistributedDataParallelKwargs(broadcast_buffers=False,
                                                          find_unused_parameters=bool(tcfg.get("find_unused_parameters", False)))],
    }
    strategy = tcfg.get("strategy", "none")
    if strategy == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        if cpu or not _accelerator_available():
            # accelerate 1.15 shards only on accelerator devices: on CPU its plugin raises "There are
            # currently no available devices found" (sync_module_states=true), and without that the
            # plugin is ignored and the run silently becomes DDP (DistributedType.MULTI_CPU).
            raise ConfigError("trainer.strategy=fsdp: accelerate's FSDP needs GPUs (on CPU it refuses, or "
                              "silently runs DDP); use trainer=ddp on CPU")
        try:
            kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(**fsdp_plugin_kwargs(tcfg))
        except RuntimeError as exc:  # no accelerator device accelerate knows
            raise ConfigError(f"trainer.strategy=fsdp: {str(exc).splitlines()[0]} (FSDP needs GPUs; "
                              "use trainer=ddp on CPU)") from exc
    elif strategy == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("trainer.strategy=deepspeed needs DeepSpeed: pip install deepspeed (CUDA GPUs only)")
        from accelerate.utils import DeepSpeedPlugin

        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=deepspeed_config(tcfg, num_processes),
                                                     zero3_init_flag=bool(tcfg.deepspeed.zero3_init))
    return kwargs


def _accelerator_available() -> bool:
    """A GPU (or another accelerator device torch knows) is present."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


def launched_processes() -> int:
    """World size of the current launch (torchrun / accelerate launch set ``WORLD_SIZE``)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


# ---------------------------------------------------------------------------- data
def per_process_batch(batch_size: int, num_processes: int) -> int:
    """B / N, or a ConfigError when the global batch does not split evenly."""
    if batch_size % num_processes:
        raise ConfigError(f"trainer.batch_size={batch_size} is the global batch; it must split evenly over "
                          f"{num_processes} processes (use a multiple of {num_processes})")
    return batch_size // num_processes


def shard(items: Sequence[Any], accelerator: Any) -> list[Any]:
    """This process's contiguous slice of a global batch (all of it on one process or without an accelerator)."""
    if accelerator is None:
        return list(items)
    n, rank = accelerator.num_processes, accelerator.process_index
    size = per_process_batch(len(items), n)
    return list(items[rank * size:(rank + 1) * size])


# ---------------------------------------------------------------------------- loss and gradients
def global_weights(weights: list[float], accelerator: Any) -> tuple[list[float], float]:
    """``(shares, total)``: backward scale ``N * w / W`` of each local micro-batch and the global ``W``.

    ``W`` sums the weights of every micro-batch on every process, so that DDP's mean over N processes
    of ``sum_m N * w_m / W * grad l_m`` is the gradient of the whole global batch's weighted mean.
    """
    n = accelerator.num_processes
    total = float(sum(weights))
    if n > 1:
        import torch.distributed as dist

        tensor = torch.tensor([total], dtype=torch.float64, device=accelerator.device)
        dist.all_reduce(tensor)
        total = float(tensor[0])
    total = total or 1.0
    return [n * w / total for w in weights], total


def term_shares(units: list[dict[str, float]], accelerator: Any) -> list[dict[str, float]]:
    """Per local micro-batch, term name -> backward scale ``N * u_mk / U_k`` of that term.

    ``units[m][k]`` is how many units of loss term ``k`` micro-batch ``m`` holds (``Objective.weight``);
    ``U_k`` sums them over every micro-batch of the step on every process, so that each term is the
    mean over the whole global batch of its own units (tokens, pairs, completions) whatever the
    split into micro-batches and processes. A term with no unit anywhere gets scale 0.
    """
    keys = list(dict.fromkeys(k for u in units for k in u))  # the same order on every rank (same objective)
    totals = torch.tensor([sum(u.get(k, 0.0) for u in units) for k in keys], dtype=torch.float64)  # (K,)
    n = accelerator.num_processes
    if n > 1:
        import torch.distributed as dist

        totals = totals.to(accelerator.device)
        dist.all_reduce(totals)
    total = dict(zip(keys, totals.tolist()))
    return [{k: (n * u.get(k, 0.0) / total[k] if total[k] > 0 else 0.0) for k in keys} for u in units]


def all_finite(loss: torch.Tensor, accelerator: Any) -> bool:
    """Whether ``loss`` is finite on every process (so that all stop together instead of one hanging)."""
    finite = bool(torch.isfinite(loss).all())
    if accelerator.num_processes == 1:
        return finite
    import torch.distributed as dist

    flag = torch.tensor([1.0 if finite else 0.0], device=accelerator.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag[0] > 0)


def reduce_metrics(values: dict[str, float], accelerator: Any, op: str = "sum") -> dict[str, float]:
    """Every process's metric values combined by ``op`` (``sum`` of already-weighted values, ``max``,
    ``min``); the keys are the same on every rank."""
    if accelerator.num_processes == 1 or not values:
        return values
    keys = list(values)  # the same order on every rank (the same objective wrote them)
    import torch.distributed as dist

    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return dict(zip(keys, tensor.tolist()))


def loose_parameters(optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Optimised tensors that ``module`` (the prepared policy) does not own: value / reward heads, critics."""
    owned = {id(p) for p in module.parameters()}
    return [p for group in optimizer.param_groups for p in group["params"] if id(p) not in owned]


def broadcast_parameters(params: list[torch.nn.Parameter], accelerator: Any) -> None:
    """Rank 0's values into every process (DDP does this for the module it wraps, not for these)."""
    if accelerator.num_processes == 1 or not params:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def average_gradients(params: list[torch.nn.Parameter], accelerator: Any) -> None:
    """Mean of the gradients of ``params`` over processes, in one flat all-reduce (what DDP does)."""
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:  # every rank must contribute the same shapes
            p.grad = torch.zeros_like(p)
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])  # (P,)
    dist.all_reduce(flat)
    flat /= accelerator.num_processes
    offset = 0
    for p in params:
        count = p.grad.numel()
        p.grad.copy_(flat[offset:offset + count].view_as(p.grad))
        offset += count


# ---------------------------------------------------------------------------- generation
def _modules(model: Any) -> Iterator[Any]:
    """``model`` and the chain of wrapped modules under it (``.module`` of DDP, FSDP, engines, ...)."""
    seen: Any = model
    for _ in range(8):
        yield seen
        inner = getattr(seen, "module", None)
        if inner is None or inner is seen:
            return
        seen = inner


@contextlib.contextmanager
def full_parameters(model: Any) -> Iterator[None]:
    """Full (unsharded) parameters for generation; a no-op unless the policy is sharded.

    FSDP (v1): ``FullyShardedDataParallel.summon_full_params``; FSDP2: ``unshard()`` / ``reshard()``
    on every ``FSDPModule``; DeepSpeed ZeRO-3: ``deepspeed.zero.GatheredParameters``. HF ``generate``
    calls submodules directly, not the sharded root's ``forward``, so without this it would read shards.
    """
    with contextlib.ExitStack() as stack:
        for module in _modules(model):
            kind = type(module).__name__
            if kind == "FullyShardedDataParallel":
                from torch.distributed.fsdp import FullyShardedDataParallel

                stack.enter_context(FullyShardedDataParallel.summon_full_params(module, writeback=False, recurse=True))
                break
            if kind == "DeepSpeedEngine" and getattr(module, "zero_optimization_stage", lambda: 0)() == 3:
                import deepspeed

                stack.enter_context(deepspeed.zero.GatheredParameters(list(module.module.parameters()), modifier_rank=None))
                break
            if hasattr(module, "unshard") and hasattr(module, "reshard") and isinstance(module, torch.nn.Module):
                sharded = [m for m in module.modules() if hasattr(m, "unshard") and hasattr(m, "reshard")]
                # FSDP2 takes the first sharded module to run forward as its root. generate runs the
                # decoder layers, not the root: before the policy's first forward (an online run's
                # evaluation before training) a layer would become the root and every later forward
                # would fail ("FSDP state has already been lazily initialized"). Settle the root first.
                state = getattr(module, "_get_fsdp_state", None)
                if state is not None:
                    state()._lazy_init()
                for m in sharded:
                    m.unshard()
                stack.callback(lambda ms=sharded: [m.reshard() for m in ms])
                break
        yield


@torch.no_grad()
def generate(policy: Any, accelerator: Any, **kwargs: Any) -> torch.Tensor:
    """``generate`` of a prepared (wrapped, possibly sharded) policy: what online rollouts sample with.

    Unwraps the policy (``accelerator.unwrap_model``; the policy itself without an accelerator), runs
    HF ``generate`` in eval mode under :func:`full_parameters` (repeated prompts prefilled once:
    :func:`alignkit.generation.generate_sharing_prompts`) and restores the train mode. Under
    greedy decoding the tokens equal those of the unsharded policy (tested with FSDP v1 and FSDP2
    on 2 CPU processes).

    Args:
        policy: the policy as prepared by accelerate (DDP, FSDP, DeepSpeed) or a plain module.
        accelerator: the run's ``Accelerator`` or None.
        kwargs: ``generate`` arguments (``input_ids``, ``attention_mask``, ``generation_config``, ...).
    """
    model = accelerator.unwrap_model(policy) if accelerator is not None else policy
    was_training = model.training
    model.eval()
    try:
        with full_parameters(policy):
            return generate_sharing_prompts(model, **kwargs)
    finally:
        model.train(was_training)
